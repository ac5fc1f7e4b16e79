"""Shared SRs (migrate.storage.sr, reconcile): one identity for every host's database, kept
in the directory; reconcile that introduces other hosts' files and removes none of theirs;
introducing the VDI a migration names; the schema migration that adds ``sr.shared``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhd
from migrate.state.schema import MIGRATIONS, VERSION
from migrate.state.store import Store
from migrate.storage.reconcile import introduce, reconcile
from migrate.storage.sr import (
    IDENTITY_FILE,
    SrIdentityError,
    create_vdi,
    destroy_vdi,
    ensure_sr,
    is_shared,
)

MiB = 1 << 20


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two hosts' databases."""
    a, b = Store.open(str(tmp_path / "a.db")), Store.open(str(tmp_path / "b.db"))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_every_host_adopts_the_directorys_uuid(stores: tuple[Store, Store], tmp_path: Path) -> None:
    a, b = stores
    directory = tmp_path / "shared"
    first = ensure_sr(a, str(directory), "shared", shared=True)
    identity = json.loads((directory / IDENTITY_FILE).read_text())
    assert identity == {"uuid": first, "shared": True}
    assert ensure_sr(b, str(directory), "shared", shared=True) == first
    assert ensure_sr(a, str(directory), "shared", shared=True) == first  # a restart
    assert is_shared(a, first) and is_shared(b, first)
    assert [p.name for p in directory.iterdir()] == [IDENTITY_FILE]  # no temporaries left
    # a host attaching it without --shared-sr still sees what it is
    c = Store.open(str(tmp_path / "c.db"))
    try:
        assert ensure_sr(c, str(directory), "plain") == first and is_shared(c, first)
    finally:
        c.close()


def test_an_unshared_sr_made_shared_keeps_its_uuid(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a, b = stores
    directory = tmp_path / "was-local"
    local = ensure_sr(a, str(directory), "local")
    assert not is_shared(a, local)
    assert ensure_sr(a, str(directory), "local", shared=True) == local and is_shared(a, local)
    assert ensure_sr(b, str(directory), "shared", shared=True) == local


def test_identities_that_do_not_fit_are_refused(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a, b = stores
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(SrIdentityError, match=IDENTITY_FILE):
        ensure_sr(a, str(directory), "bad", shared=True)
    (directory / IDENTITY_FILE).write_text(json.dumps({"uuid": "nope", "shared": True}))
    with pytest.raises(SrIdentityError, match="nope"):
        ensure_sr(a, str(directory), "bad", shared=True)
    # b recorded the directory as an unshared SR of its own before a shared it
    other = tmp_path / "other"
    mine = ensure_sr(b, str(other), "b's")
    (other / IDENTITY_FILE).write_text(json.dumps({"uuid": str(uuid.uuid4()), "shared": True}))
    with pytest.raises(SrIdentityError, match=mine):
        ensure_sr(b, str(other), "b's", shared=True)
    # the directory's uuid is already another SR's here
    third = tmp_path / "third"
    third.mkdir()
    (third / IDENTITY_FILE).write_text(json.dumps({"uuid": mine, "shared": True}))
    with pytest.raises(SrIdentityError, match="already"):
        ensure_sr(b, str(third), "third", shared=True)


def test_reconcile_introduces_and_removes_nothing_of_another_host(
    stores: tuple[Store, Store], tmp_path: Path
) -> None:
    a, b = stores
    directory = tmp_path / "shared"
    sr = ensure_sr(a, str(directory), "shared", shared=True)
    ensure_sr(b, str(directory), "shared", shared=True)
    theirs = create_vdi(a, sr, 2 * MiB, "a's")
    part = directory / f".{theirs}.vhd.part"  # a's import into it, in progress
    part.write_bytes(b"\0" * 512)
    repairs = reconcile(b, sr)
    assert len(repairs) == 1 and "introduced" in repairs[0] and theirs in repairs[0]
    assert b.get("VDI", theirs)["virtual_size"] == 2 * MiB
    assert part.exists() and (directory / f"{theirs}.vhd").exists()
    assert reconcile(b, sr) == []
    # b's own interrupted creation is still undone
    mine = str(uuid.uuid4())
    b.insert(
        "VDI",
        {
            "uuid": mine,
            "sr": sr,
            "name_label": "b's",
            "virtual_size": MiB,
            "format": "vhd",
            "parent": None,
            "state": "creating",
        },
    )
    vhd.create(str(directory / f".{mine}.vhd.part"), MiB)
    reconcile(b, sr)
    assert not (directory / f".{mine}.vhd.part").exists()
    assert [row["uuid"] for row in b.all("VDI", sr=sr)] == [theirs]
    # a VDI destroyed by the other host: its row goes at the next reconcile, nothing else
    part.unlink()
    destroy_vdi(a, theirs)
    reconcile(b, sr)
    assert b.all("VDI", sr=sr) == []


def test_introduce_the_vdi_a_migration_names(stores: tuple[Store, Store], tmp_path: Path) -> None:
    a, b = stores
    directory = tmp_path / "shared"
    sr = ensure_sr(a, str(directory), "shared", shared=True)
    ensure_sr(b, str(directory), "shared", shared=True)
    vdi = create_vdi(a, sr, 4 * MiB, "disk", fixed=True)
    assert introduce(b, sr, vdi) is None
    assert b.get("VDI", vdi)["state"] == "ready"
    missing = str(uuid.uuid4())
    why = introduce(b, sr, missing)
    assert why is not None and "has no file" in why and missing in why


def test_migration_4_on_a_version_3_database(tmp_path: Path) -> None:
    db_path = str(tmp_path / "old.db")
    db = sqlite3.connect(db_path, isolation_level=None)
    for number in (1, 2, 3):
        db.executescript(
            f"BEGIN; {MIGRATIONS[number - 1]}; PRAGMA user_version = {number}; COMMIT;"
        )
    db.execute("INSERT INTO sr VALUES ('7a1f3e0c-0000-4000-8000-0000000000aa', 'old', '/x', 1, 1)")
    db.close()
    store = Store.open(db_path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION == 4
        assert store.get("SR", "7a1f3e0c-0000-4000-8000-0000000000aa")["shared"] == 0
    finally:
        store.close()
