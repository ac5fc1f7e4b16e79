"""migrate.storage.sr: SR directories of VHD files, their rows, and recovery after crashes."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import vhd
from migrate.state.store import NotFound, Store
from migrate.storage import sr
from migrate.storage.reconcile import reconcile
from migrate.storage.sr import VdiInUse, create_vdi, destroy_vdi, ensure_sr

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def sr_dir(store: Store, sr_uuid: str) -> Path:
    return Path(store.get("SR", sr_uuid)["path"])


def assert_invariant(store: Store, sr_uuid: str) -> None:
    """Every row of the SR is ready with its file; every ``<uuid>.vhd`` has a row; no parts."""
    directory = sr_dir(store, sr_uuid)
    rows = store.all("VDI", sr=sr_uuid)
    assert all(row["state"] == "ready" for row in rows), rows
    files = {p.name for p in directory.iterdir()}
    assert {f"{row['uuid']}.vhd" for row in rows} == {n for n in files if n.endswith(".vhd")}
    assert not [n for n in files if n.endswith(".part")]


def add_row(store: Store, sr_uuid: str, state: str, size: int = 4 * MiB) -> str:
    vdi = str(uuid.uuid4())
    store.insert(
        "VDI",
        {
            "uuid": vdi,
            "sr": sr_uuid,
            "name_label": state,
            "virtual_size": size,
            "format": "vhd",
            "parent": None,
            "state": state,
        },
    )
    return vdi


def test_create_and_destroy_round_trip(store: Store, sr_uuid: str) -> None:
    vdi = create_vdi(store, sr_uuid, 8 * MiB, "data disk")
    row = store.get("VDI", vdi)
    assert (row["sr"], row["name_label"], row["virtual_size"]) == (sr_uuid, "data disk", 8 * MiB)
    assert (row["format"], row["state"], row["parent"]) == ("vhd", "ready", None)
    path = sr.vdi_path(str(sr_dir(store, sr_uuid)), vdi)
    assert path == str(sr_dir(store, sr_uuid) / f"{vdi}.vhd")
    with vhd.Image.open(path) as image:
        assert image.size == 8 * MiB
        assert str(image.footer.uuid) == vdi
    assert [r["uuid"] for r in sr.ready_vdis(store, sr_uuid)] == [vdi]
    assert_invariant(store, sr_uuid)

    destroy_vdi(store, vdi)
    assert not os.path.exists(path)
    with pytest.raises(NotFound):
        store.get("VDI", vdi)
    assert sr.ready_vdis(store, sr_uuid) == []
    assert list(sr_dir(store, sr_uuid).iterdir()) == []
    with pytest.raises(NotFound):
        destroy_vdi(store, vdi)


@pytest.mark.parametrize("size", [0, 1000, 1 << 50])
def test_invalid_size_leaves_neither_row_nor_file(store: Store, sr_uuid: str, size: int) -> None:
    with pytest.raises(vhd.VhdError, match="size"):
        create_vdi(store, sr_uuid, size, "bad")
    assert store.all("VDI") == []
    assert list(sr_dir(store, sr_uuid).iterdir()) == []


def test_failure_after_the_rename_removes_file_and_row(
    store: Store, sr_uuid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_update(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "update", failing_update)
    with pytest.raises(OSError, match="disk on fire"):
        create_vdi(store, sr_uuid, 4 * MiB, "doomed")
    assert store.all("VDI") == []
    assert list(sr_dir(store, sr_uuid).iterdir()) == []


def test_vdi_path_refuses_what_is_not_a_uuid() -> None:
    with pytest.raises(ValueError):
        sr.vdi_path("/srv/sr", "../../etc/passwd")
    with pytest.raises(ValueError):
        sr.vdi_path("/srv/sr", str(uuid.uuid4()).upper())


# Crashes, built as the intermediate state each step of create and destroy leaves


@pytest.mark.parametrize(
    ("state", "files"),
    [
        ("creating", []),  # crash after the row was inserted
        ("creating", ["part"]),  # during or after vhd.create
        ("creating", ["final"]),  # after the rename, before the row became ready
        ("creating", ["part", "final"]),  # a stale part beside a renamed file
        ("destroying", ["final"]),  # after the row was marked, before the unlink
        ("destroying", []),  # after the unlink, before the row was deleted
    ],
)
def test_reconcile_finishes_an_interrupted_step(
    store: Store, sr_uuid: str, state: str, files: list[str]
) -> None:
    keep = create_vdi(store, sr_uuid, 4 * MiB, "bystander")
    directory = sr_dir(store, sr_uuid)
    vdi = add_row(store, sr_uuid, state)
    paths = {"part": directory / f".{vdi}.vhd.part", "final": directory / f"{vdi}.vhd"}
    for name in files:
        vhd.create(str(paths[name]), 4 * MiB)

    repairs = reconcile(store, sr_uuid)

    assert len(repairs) == 1 and vdi in repairs[0] and "interrupted" in repairs[0], repairs
    with pytest.raises(NotFound):
        store.get("VDI", vdi)
    assert not any(p.exists() for p in paths.values())
    assert [r["uuid"] for r in sr.ready_vdis(store, sr_uuid)] == [keep]
    assert (directory / f"{keep}.vhd").exists()
    assert_invariant(store, sr_uuid)
    assert reconcile(store, sr_uuid) == []


def test_reconcile_removes_part_leftovers(store: Store, sr_uuid: str) -> None:
    part = sr_dir(store, sr_uuid) / f".{uuid.uuid4()}.vhd.part"
    part.write_bytes(b"half a disk")
    repairs = reconcile(store, sr_uuid)
    assert repairs == [f"removed partial file {part}"]
    assert not part.exists()


def test_ready_row_without_its_file_is_deleted_and_logged(
    store: Store, sr_uuid: str, caplog: pytest.LogCaptureFixture
) -> None:
    vdi = create_vdi(store, sr_uuid, 4 * MiB, "vanishing")
    (sr_dir(store, sr_uuid) / f"{vdi}.vhd").unlink()
    with caplog.at_level(logging.WARNING, logger="xfer.storage"):
        repairs = reconcile(store, sr_uuid)
    assert len(repairs) == 1 and "behind our back" in repairs[0]
    assert "behind our back" in caplog.text and vdi in caplog.text
    assert store.all("VDI") == []
    assert_invariant(store, sr_uuid)


CRASH_AFTER = """
import os, sys
from migrate.state.store import Store
from migrate.storage import sr

real = getattr(os, sys.argv[1])

def crash(*args):
    real(*args)
    os._exit(17)

setattr(os, sys.argv[1], crash)
store = Store.open(sys.argv[2])
if sys.argv[1] == "replace":
    sr.create_vdi(store, sys.argv[3], 8 << 20, "doomed")
else:
    sr.destroy_vdi(store, sys.argv[3])
"""


def crash_after(call: str, db: Path, target: str) -> None:
    """Run create_vdi (``replace``) or destroy_vdi (``unlink``) in a child killed after ``call``."""
    child = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER, call, str(db), target],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 17, child.stderr.decode()


def test_real_crash_after_the_rename(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store.open(str(db))
    sr_uuid = ensure_sr(store, str(tmp_path / "sr"), "Local", default=True)
    store.close()

    crash_after("replace", db, sr_uuid)

    store = Store.open(str(db))
    [row] = store.all("VDI")
    assert row["state"] == "creating"  # the crash happened between the rename and "ready"
    directory = sr_dir(store, sr_uuid)
    assert [p.name for p in directory.iterdir()] == [f"{row['uuid']}.vhd"]
    repairs = reconcile(store, sr_uuid)
    assert len(repairs) == 1 and row["uuid"] in repairs[0]
    assert store.all("VDI") == []
    assert_invariant(store, sr_uuid)
    store.close()


def test_real_crash_after_the_unlink(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store = Store.open(str(db))
    sr_uuid = ensure_sr(store, str(tmp_path / "sr"), "Local", default=True)
    vdi = create_vdi(store, sr_uuid, 4 * MiB, "doomed")
    store.close()

    crash_after("unlink", db, vdi)

    store = Store.open(str(db))
    assert store.get("VDI", vdi)["state"] == "destroying"
    assert list(sr_dir(store, sr_uuid).iterdir()) == []
    assert len(reconcile(store, sr_uuid)) == 1
    assert store.all("VDI") == []
    assert_invariant(store, sr_uuid)
    store.close()


# Files without rows


def test_a_foreign_vhd_is_introduced_with_its_size(store: Store, sr_uuid: str) -> None:
    directory = sr_dir(store, sr_uuid)
    vdi = str(uuid.uuid4())
    vhd.create(str(directory / f"{vdi}.vhd"), 6 * MiB)
    (directory / "notes.txt").write_text("not a VDI")
    (directory / "disk.vhd").write_bytes(b"not named by a uuid")

    repairs = reconcile(store, sr_uuid)

    assert len(repairs) == 1 and "introduced" in repairs[0] and vdi in repairs[0]
    row = store.get("VDI", vdi)
    assert (row["sr"], row["virtual_size"], row["state"]) == (sr_uuid, 6 * MiB, "ready")
    assert (row["name_label"], row["format"]) == (f"introduced {vdi}", "vhd")
    assert reconcile(store, sr_uuid) == []
    destroy_vdi(store, vdi)
    assert not (directory / f"{vdi}.vhd").exists()


def test_a_file_that_is_not_a_vhd_is_reported_and_left_alone(store: Store, sr_uuid: str) -> None:
    junk = sr_dir(store, sr_uuid) / f"{uuid.uuid4()}.vhd"
    junk.write_bytes(b"\x01" * 4096)
    repairs = reconcile(store, sr_uuid)
    assert len(repairs) == 1 and "left alone" in repairs[0] and str(junk) in repairs[0]
    assert store.all("VDI") == []
    assert junk.read_bytes() == b"\x01" * 4096


def test_a_file_named_by_another_srs_vdi_is_left_alone(
    store: Store, sr_uuid: str, tmp_path: Path
) -> None:
    vdi = create_vdi(store, sr_uuid, 4 * MiB, "original")
    other = ensure_sr(store, str(tmp_path / "other"), "Other")
    copy = sr_dir(store, other) / f"{vdi}.vhd"
    vhd.create(str(copy), 4 * MiB)
    repairs = reconcile(store, other)
    assert len(repairs) == 1 and "left alone" in repairs[0]
    assert store.get("VDI", vdi)["sr"] == sr_uuid
    assert copy.exists()


# Parents


def test_a_parent_cannot_be_destroyed(store: Store, sr_uuid: str) -> None:
    parent = create_vdi(store, sr_uuid, 4 * MiB, "base")
    child = create_vdi(store, sr_uuid, 4 * MiB, "delta")
    store.update("VDI", child, {"parent": parent})
    generation = store.generation()
    with pytest.raises(VdiInUse, match=child):
        destroy_vdi(store, parent)
    assert store.get("VDI", parent)["state"] == "ready"
    assert store.generation() == generation
    assert (sr_dir(store, sr_uuid) / f"{parent}.vhd").exists()
    destroy_vdi(store, child)
    destroy_vdi(store, parent)
    assert store.all("VDI") == []


def test_reconcile_deletes_children_before_their_parents(store: Store, sr_uuid: str) -> None:
    parent = add_row(store, sr_uuid, "destroying")
    child = add_row(store, sr_uuid, "creating")
    store.update("VDI", child, {"parent": parent})
    assert len(reconcile(store, sr_uuid)) == 2
    assert store.all("VDI") == []


def test_reconcile_keeps_a_missing_parent_that_a_ready_child_needs(
    store: Store, sr_uuid: str
) -> None:
    parent = create_vdi(store, sr_uuid, 4 * MiB, "base")
    child = create_vdi(store, sr_uuid, 4 * MiB, "delta")
    store.update("VDI", child, {"parent": parent})
    (sr_dir(store, sr_uuid) / f"{parent}.vhd").unlink()
    repairs = reconcile(store, sr_uuid)
    assert len(repairs) == 1 and "kept" in repairs[0] and child in repairs[0]
    assert store.get("VDI", parent)["state"] == "ready"


# SRs


def test_srs_and_the_one_default(store: Store, tmp_path: Path) -> None:
    first = ensure_sr(store, str(tmp_path / "a" / "sr"), "A", default=True)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "sr").st_mode) == 0o700
    assert store.get("SR", first)["path"] == str((tmp_path / "a" / "sr").resolve())

    second = ensure_sr(store, str(tmp_path / "b"), "B")
    assert second != first
    assert [r["uuid"] for r in store.all("SR", is_default=1)] == [first]

    (tmp_path / "link").symlink_to(tmp_path / "a")
    generation = store.generation()
    assert ensure_sr(store, str(tmp_path / "link" / "sr"), "again") == first
    assert ensure_sr(store, str(tmp_path / "a" / "sr") + "/", "again", default=True) == first
    assert store.generation() == generation  # nothing to change, nothing written
    assert store.get("SR", first)["name_label"] == "A"

    assert ensure_sr(store, str(tmp_path / "b"), "B", default=True) == second
    assert [r["uuid"] for r in store.all("SR", is_default=1)] == [second]
    third = ensure_sr(store, str(tmp_path / "c"), "C", default=True)
    assert [r["uuid"] for r in store.all("SR", is_default=1)] == [third]
    assert len(store.all("SR")) == 3


def test_state_survives_a_restart(tmp_path: Path) -> None:
    db, directory = str(tmp_path / "state.db"), str(tmp_path / "sr")
    store = Store.open(db)
    sr_uuid = ensure_sr(store, directory, "Local", default=True)
    kept = create_vdi(store, sr_uuid, 4 * MiB, "kept")
    gone = create_vdi(store, sr_uuid, 4 * MiB, "gone")
    destroy_vdi(store, gone)
    store.close()

    store = Store.open(db)
    assert ensure_sr(store, directory, "Local", default=True) == sr_uuid
    assert reconcile(store, sr_uuid) == []
    [row] = sr.ready_vdis(store, sr_uuid)
    assert (row["uuid"], row["name_label"], row["virtual_size"]) == (kept, "kept", 4 * MiB)
    assert_invariant(store, sr_uuid)
    store.close()
