"""The database schema as numbered migrations, applied in order on open (``user_version``)."""

from __future__ import annotations

import os
import sqlite3

MIGRATIONS: list[str] = [
    # 1: the host, its networks and interfaces, storage, sessions, tasks, and the event clock
    """
    CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL);
    INSERT INTO clock VALUES (1, 0);

    CREATE TABLE host (
        uuid TEXT PRIMARY KEY,
        name_label TEXT NOT NULL,
        address TEXT NOT NULL,
        primary_address_type TEXT NOT NULL CHECK (primary_address_type IN ('IPv4', 'IPv6')),
        generation INTEGER NOT NULL
    );

    CREATE TABLE network (
        uuid TEXT PRIMARY KEY,
        name_label TEXT NOT NULL,
        bridge TEXT NOT NULL UNIQUE,
        generation INTEGER NOT NULL
    );

    CREATE TABLE pif (
        uuid TEXT PRIMARY KEY,
        host TEXT NOT NULL REFERENCES host (uuid) ON DELETE CASCADE,
        network TEXT NOT NULL REFERENCES network (uuid) ON DELETE CASCADE,
        device TEXT NOT NULL,
        mac TEXT NOT NULL,
        primary_address_type TEXT NOT NULL CHECK (primary_address_type IN ('IPv4', 'IPv6')),
        generation INTEGER NOT NULL,
        UNIQUE (host, device)
    );

    CREATE TABLE pif_address (
        pif TEXT NOT NULL REFERENCES pif (uuid) ON DELETE CASCADE,
        address TEXT NOT NULL,
        prefix_length INTEGER NOT NULL,
        family TEXT NOT NULL CHECK (family IN ('IPv4', 'IPv6')),
        link_local INTEGER NOT NULL,
        PRIMARY KEY (pif, address)
    );

    CREATE TABLE sr (
        uuid TEXT PRIMARY KEY,
        name_label TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        is_default INTEGER NOT NULL,
        generation INTEGER NOT NULL
    );

    CREATE TABLE vdi (
        uuid TEXT PRIMARY KEY,
        sr TEXT NOT NULL REFERENCES sr (uuid),
        name_label TEXT NOT NULL,
        virtual_size INTEGER NOT NULL,
        format TEXT NOT NULL,
        parent TEXT REFERENCES vdi (uuid),
        state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'destroying')),
        generation INTEGER NOT NULL
    );

    CREATE TABLE session (
        ref TEXT PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL,
        originator TEXT NOT NULL,
        created REAL NOT NULL,
        last_active REAL NOT NULL
    );

    CREATE TABLE task (
        uuid TEXT PRIMARY KEY,
        name_label TEXT NOT NULL,
        session TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('pending', 'success', 'failure', 'cancelling', 'cancelled')),
        progress REAL NOT NULL,
        result TEXT NOT NULL,
        error_info TEXT NOT NULL,
        created REAL NOT NULL,
        finished REAL,
        generation INTEGER NOT NULL
    );

    CREATE TABLE credential (
        user TEXT PRIMARY KEY,
        salt BLOB NOT NULL,
        hash BLOB NOT NULL,
        iterations INTEGER NOT NULL
    );

    CREATE TABLE tombstone (
        class TEXT NOT NULL,
        uuid TEXT NOT NULL,
        generation INTEGER NOT NULL,
        PRIMARY KEY (class, uuid)
    );
    """,
    # 2: snapshots: the snapshot flag, the VDI a snapshot was taken of, and hidden base copies
    """
    ALTER TABLE vdi ADD COLUMN is_a_snapshot INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE vdi ADD COLUMN snapshot_of TEXT;
    ALTER TABLE vdi ADD COLUMN managed INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: VMs and their VBDs (disks attached to VDIs); a task's other_config (a JSON map)
    """
    CREATE TABLE vm (
        uuid TEXT PRIMARY KEY,
        name_label TEXT NOT NULL,
        memory INTEGER NOT NULL,
        vcpus INTEGER NOT NULL,
        workload TEXT NOT NULL,
        power_state TEXT NOT NULL
            CHECK (power_state IN ('Halted', 'Running', 'Paused', 'Suspended')),
        resident_on TEXT,
        generation INTEGER NOT NULL
    );

    CREATE TABLE vbd (
        uuid TEXT PRIMARY KEY,
        vm TEXT NOT NULL REFERENCES vm (uuid) ON DELETE CASCADE,
        vdi TEXT NOT NULL REFERENCES vdi (uuid) ON DELETE CASCADE,
        device TEXT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('RW', 'RO')),
        generation INTEGER NOT NULL,
        UNIQUE (vm, device)
    );
    CREATE INDEX vbd_vdi ON vbd (vdi);

    ALTER TABLE task ADD COLUMN other_config TEXT NOT NULL DEFAULT '{}';
    """,
    # 4: SRs shared with other hosts (the same directory, attached by each)
    """
    ALTER TABLE sr ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
    """,
]
"""Migration N (1-based) takes a database from user_version N-1 to N. Append, never edit."""

VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database is newer than this program, or not ours."""


def open_database(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the state database at ``path``, migrated to :data:`VERSION`.

    WAL journal, foreign keys on, synchronous=FULL so that a commit survives a crash.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise SchemaError(
                f"{path} has schema version {version}; this xfer knows up to {VERSION}"
            )
        for number in range(version + 1, VERSION + 1):
            db.executescript(
                f"BEGIN; {MIGRATIONS[number - 1]}; PRAGMA user_version = {number}; COMMIT;"
            )
    except (sqlite3.DatabaseError, SchemaError) as e:
        db.close()
        raise SchemaError(f"{path}: {e}") from None
    return db
