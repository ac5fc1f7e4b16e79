"""Queries on the state database: records by class, the event clock, sessions, credentials.

Every change happens in :meth:`Store.change`, one transaction that advances the event clock:
each row it writes carries the new generation, each row it deletes leaves a tombstone, so
``changes_since(token)`` answers XenAPI's ``event.from`` with every change after a token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from migrate.state import credentials
from migrate.state.credentials import Credential
from migrate.state.schema import open_database

TABLES = {
    "host": "host",
    "network": "network",
    "PIF": "pif",
    "SR": "sr",
    "VDI": "vdi",
    "VM": "vm",
    "VBD": "vbd",
    "task": "task",
}
"""XenAPI class name -> table. Tables without a generation column (sessions, credentials,
PIF addresses) change no event-visible record by themselves."""


class NotFound(KeyError):
    """No record of that class with that uuid."""


@dataclass(frozen=True)
class Change:
    """One record changed (or deleted) at ``generation``."""

    cls: str
    uuid: str
    generation: int
    deleted: bool


class Store:
    """The state database of one host. Not shared across threads: one owner task at a time."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.row_factory = sqlite3.Row
        self._generation: int | None = None
        self._columns: dict[str, set[str]] = {}

    @classmethod
    def open(cls, path: str) -> Store:
        """Open (creating and migrating as needed) the database at ``path``."""
        return cls(open_database(path))

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    @contextmanager
    def change(self) -> Iterator[int]:
        """One atomic change: yields the new generation its rows carry; rolls back on error."""
        if self._generation is not None:
            yield self._generation  # nested: part of the enclosing change
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("UPDATE clock SET generation = generation + 1")
            self._generation = self.generation()
            yield self._generation
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._generation = None

    def generation(self) -> int:
        """The event clock: the generation of the last committed change."""
        row = self.db.execute("SELECT generation FROM clock").fetchone()
        return int(row[0])

    # Records

    def _table(self, cls: str, fields: dict[str, Any] | None = None) -> str:
        """The table of ``cls``, after checking that every name in ``fields`` is a column."""
        table = TABLES[cls]
        columns = self._columns.get(table)
        if columns is None:
            rows = self.db.execute(f"PRAGMA table_info({table})")
            columns = self._columns[table] = {row["name"] for row in rows}
        unknown = set(fields or ()) - columns
        if unknown:
            raise ValueError(f"{cls} has no field {', '.join(sorted(unknown))}")
        return table

    def insert(self, cls: str, fields: dict[str, Any]) -> None:
        """Add a record of XenAPI class ``cls`` (``fields`` must include ``uuid``)."""
        table = self._table(cls, fields)
        with self.change() as generation:
            names = [*fields, "generation"]
            marks = ", ".join("?" for _ in names)
            self.db.execute(
                f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",
                [*fields.values(), generation],
            )
            self.db.execute(
                "DELETE FROM tombstone WHERE class = ? AND uuid = ?", (cls, fields["uuid"])
            )

    def update(self, cls: str, uuid: str, fields: dict[str, Any]) -> None:
        """Change fields of one record; NotFound if there is none."""
        table = self._table(cls, fields)
        with self.change() as generation:
            sets = ", ".join(f"{name} = ?" for name in fields)
            cursor = self.db.execute(
                f"UPDATE {table} SET {sets}, generation = ? WHERE uuid = ?",
                [*fields.values(), generation, uuid],
            )
            if cursor.rowcount == 0:
                raise NotFound(f"{cls} {uuid}")

    def delete(self, cls: str, uuid: str) -> None:
        """Remove one record, leaving a tombstone for event watchers; NotFound if none."""
        table = TABLES[cls]
        with self.change() as generation:
            cursor = self.db.execute(f"DELETE FROM {table} WHERE uuid = ?", (uuid,))
            if cursor.rowcount == 0:
                raise NotFound(f"{cls} {uuid}")
            self.db.execute(
                "INSERT OR REPLACE INTO tombstone (class, uuid, generation) VALUES (?, ?, ?)",
                (cls, uuid, generation),
            )

    def get(self, cls: str, uuid: str) -> dict[str, Any]:
        """One record as a dict; NotFound if there is none."""
        row = self.db.execute(f"SELECT * FROM {TABLES[cls]} WHERE uuid = ?", (uuid,)).fetchone()
        if row is None:
            raise NotFound(f"{cls} {uuid}")
        return dict(row)

    def all(self, cls: str, **where: Any) -> list[dict[str, Any]]:
        """Every record of ``cls`` whose fields equal ``where``, in uuid order."""
        table = self._table(cls, where)
        clause = " AND ".join(f"{name} = ?" for name in where) or "1"
        rows = self.db.execute(
            f"SELECT * FROM {table} WHERE {clause} ORDER BY uuid", list(where.values())
        )
        return [dict(row) for row in rows]

    def get_visible(self, cls: str, uuid: str) -> dict[str, Any]:
        """One record clients may see (a VDI once ``ready``); NotFound otherwise."""
        row = self.get(cls, uuid)
        if cls == "VDI" and row["state"] != "ready":
            raise NotFound(f"{cls} {uuid}")
        return row

    def all_visible(self, cls: str) -> list[dict[str, Any]]:
        """Every record of ``cls`` clients may see, in uuid order."""
        return self.all(cls, state="ready") if cls == "VDI" else self.all(cls)

    def count_visible(self, cls: str) -> int:
        """How many records of ``cls`` clients may see."""
        where = " WHERE state = 'ready'" if cls == "VDI" else ""
        row = self.db.execute(f"SELECT count(*) FROM {TABLES[cls]}{where}").fetchone()
        return int(row[0])

    def touch(self, cls: str, uuid: str) -> int:
        """Move one record to a new generation, unchanged (it shows as modified); that
        generation. NotFound if there is none."""
        with self.change() as generation:
            cursor = self.db.execute(
                f"UPDATE {TABLES[cls]} SET generation = ? WHERE uuid = ?", (generation, uuid)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"{cls} {uuid}")
        return generation

    def changes_since(self, generation: int) -> list[Change]:
        """Every record changed or deleted after ``generation``, oldest first."""
        parts = [
            f"SELECT '{cls}' AS cls, uuid, generation, 0 AS deleted FROM {table} "
            "WHERE generation > :g"
            for cls, table in TABLES.items()
        ]
        parts.append(
            "SELECT class AS cls, uuid, generation, 1 AS deleted FROM tombstone "
            "WHERE generation > :g"
        )
        query = " UNION ALL ".join(parts) + " ORDER BY generation, cls, uuid"
        return [
            Change(row["cls"], row["uuid"], row["generation"], bool(row["deleted"]))
            for row in self.db.execute(query, {"g": generation})
        ]

    # Sessions (not records: no generation, no events)

    def open_session(self, ref: str, uuid: str, user: str, originator: str, now: float) -> None:
        """Record a new session, active as of ``now``."""
        self.db.execute(
            "INSERT INTO session (ref, uuid, user, originator, created, last_active) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ref, uuid, user, originator, now, now),
        )

    def session_activity(self, ref: str) -> float | None:
        """When the session ``ref`` was last active; None if there is no such session."""
        row = self.db.execute("SELECT last_active FROM session WHERE ref = ?", (ref,)).fetchone()
        return None if row is None else float(row[0])

    def touch_session(self, ref: str, now: float) -> None:
        """Note that the session ``ref`` is active as of ``now``."""
        self.db.execute("UPDATE session SET last_active = ? WHERE ref = ?", (now, ref))

    def close_session(self, ref: str) -> None:
        """Forget the session ``ref``."""
        self.db.execute("DELETE FROM session WHERE ref = ?", (ref,))

    def close_sessions_before(self, last_active: float) -> None:
        """Forget every session inactive since before ``last_active``."""
        self.db.execute("DELETE FROM session WHERE last_active < ?", (last_active,))

    # Credentials

    def set_credential(self, user: str, credential: Credential) -> None:
        """Store ``user``'s credential (a hash, never the password)."""
        self.db.execute(
            "INSERT OR REPLACE INTO credential (user, salt, hash, iterations) VALUES (?, ?, ?, ?)",
            (user, credential.salt, credential.hash, credential.iterations),
        )

    def set_password(self, user: str, password: str) -> None:
        """Store the credential of ``password`` for ``user`` (hashed here: for start-up)."""
        self.set_credential(user, credentials.new(password))

    def credential(self, user: str) -> Credential | None:
        """``user``'s stored credential, None if there is none."""
        row = self.db.execute(
            "SELECT salt, hash, iterations FROM credential WHERE user = ?", (user,)
        ).fetchone()
        return None if row is None else Credential(row["salt"], row["hash"], row["iterations"])
