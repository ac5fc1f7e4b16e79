"""migrate.state: the versioned SQLite schema, records and the event clock, credentials."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from migrate.state import credentials
from migrate.state.schema import VERSION, SchemaError, open_database
from migrate.state.store import Change, NotFound, Store


def new_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path / "state" / "xfer.db"))


def add_sr(store: Store, path: str = "/srv/sr") -> str:
    sr = new_uuid()
    store.insert("SR", {"uuid": sr, "name_label": "Local", "path": path, "is_default": 1})
    return sr


def test_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    db = open_database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    db.close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {VERSION + 1}")
    raw.close()
    with pytest.raises(SchemaError, match=f"schema version {VERSION + 1}"):
        open_database(path)


def test_not_a_database_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError, match=r"junk\.db"):
        open_database(str(path))


def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "xfer.db")
    first = Store.open(path)
    sr = add_sr(first)
    first.close()
    again = Store.open(path)
    assert again.get("SR", sr)["path"] == "/srv/sr"
    assert again.generation() == 1


def test_insert_get_update_delete_and_events(store: Store) -> None:
    start = store.generation()
    sr = add_sr(store)
    vdi = new_uuid()
    store.insert(
        "VDI",
        {
            "uuid": vdi,
            "sr": sr,
            "name_label": "disk",
            "virtual_size": 1 << 30,
            "format": "vhd",
            "parent": None,
            "state": "ready",
        },
    )
    store.update("VDI", vdi, {"name_label": "renamed"})
    assert store.get("VDI", vdi)["name_label"] == "renamed"
    assert [v["uuid"] for v in store.all("VDI", sr=sr)] == [vdi]
    assert store.all("VDI", sr=new_uuid()) == []
    store.delete("VDI", vdi)
    with pytest.raises(NotFound):
        store.get("VDI", vdi)
    with pytest.raises(NotFound):
        store.update("VDI", vdi, {"name_label": "x"})
    with pytest.raises(NotFound):
        store.delete("VDI", vdi)
    assert store.changes_since(start) == [
        Change("SR", sr, start + 1, deleted=False),
        Change("VDI", vdi, start + 4, deleted=True),
    ]
    assert store.changes_since(start + 4) == []


def test_a_failed_change_leaves_nothing(store: Store) -> None:
    before = store.generation()
    sr = new_uuid()
    with pytest.raises(RuntimeError), store.change():
        store.insert("SR", {"uuid": sr, "name_label": "a", "path": "/a", "is_default": 0})
        raise RuntimeError("boom")
    assert store.generation() == before
    with pytest.raises(NotFound):
        store.get("SR", sr)


def test_one_change_one_generation(store: Store) -> None:
    with store.change() as generation:
        a = add_sr(store, "/a")
        b = add_sr(store, "/b")
    assert {c.uuid: c.generation for c in store.changes_since(0)} == {a: generation, b: generation}


def test_integrity_is_enforced(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.insert(
            "VDI",
            {
                "uuid": new_uuid(),
                "sr": new_uuid(),  # no such SR
                "name_label": "x",
                "virtual_size": 1,
                "format": "vhd",
                "parent": None,
                "state": "ready",
            },
        )
    with pytest.raises(ValueError, match="no field bogus"):
        store.update("SR", new_uuid(), {"bogus": 1})
    with pytest.raises(ValueError, match="no field"):
        store.all("SR", **{"1=1 OR uuid": "x"})


def test_a_killed_writer_leaves_no_half_change(tmp_path: Path) -> None:
    path = str(tmp_path / "xfer.db")
    Store.open(path).close()
    script = f"""
import os
from migrate.state.store import Store
s = Store.open({path!r})
with s.change():
    s.insert("SR", {{"uuid": "u1", "name_label": "a", "path": "/a", "is_default": 0}})
    s.insert("SR", {{"uuid": "u2", "name_label": "b", "path": "/b", "is_default": 0}})
    os._exit(9)
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert done.returncode == 9
    store = Store.open(path)
    assert store.all("SR") == []
    assert store.generation() == 0


def test_passwords_are_salted_hashes_checked_in_constant_time(store: Store) -> None:
    store.set_password("root", "secret")
    store.set_password("other", "secret")
    rows = store.db.execute("SELECT user, salt, hash FROM credential ORDER BY user").fetchall()
    assert rows[0]["salt"] != rows[1]["salt"] and rows[0]["hash"] != rows[1]["hash"]
    assert all(b"secret" not in bytes(row["hash"]) for row in rows)
    assert store.credential("root") is not None and store.credential("nobody") is None
    assert credentials.verify(store.credential("root"), "secret")
    assert not credentials.verify(store.credential("root"), "Secret")
    assert not credentials.verify(store.credential("nobody"), "secret")
