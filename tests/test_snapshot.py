"""VDI snapshots: migrate.storage.snapshot, its crash recovery, and VDI.snapshot."""

from __future__ import annotations

import os
import sqlite3
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import XenAPI

import vhd
from migrate.guest.processes import ProcessHypervisor
from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.rpc.dispatch import Dispatcher
from migrate.state.schema import MIGRATIONS, VERSION
from migrate.state.store import Store
from migrate.storage import files, snapshot
from migrate.storage.reconcile import reconcile
from migrate.storage.snapshot import snapshot_vdi
from migrate.storage.sr import (
    VdiInUse,
    create_vdi,
    destroy_vdi,
    ensure_sr,
    vdi_path,
)
from support import HOST, failure, wait_until_sync
from vhd.plan import differing_blocks

MiB = 1 << 20
SIZE = 8 * MiB
BLOCK = 2 * MiB


def sr_path(store: Store, sr_uuid: str) -> str:
    return str(store.get("SR", sr_uuid)["path"])


def assert_invariant(store: Store, sr_uuid: str) -> None:
    """Every row ready with its file, every file with its row, no parts, parents ready."""
    directory = Path(sr_path(store, sr_uuid))
    rows = store.all("VDI", sr=sr_uuid)
    assert all(row["state"] == "ready" for row in rows), rows
    files = {p.name for p in directory.iterdir()}
    assert {f"{row['uuid']}.vhd" for row in rows} == {n for n in files if n.endswith(".vhd")}
    assert not [n for n in files if n.endswith(".part")]
    uuids = {row["uuid"] for row in rows}
    for row in rows:
        assert row["parent"] is None or row["parent"] in uuids
        with vhd.Image.open(vdi_path(str(directory), row["uuid"])) as image:
            chain = [str(member.footer.uuid) for member in image.chain()]
        parent_file = chain[1] if len(chain) > 1 else None
        # The file's parent is the file of the row's parent.
        if row["parent"] is None:
            assert parent_file is None
        else:
            with vhd.Image.open(vdi_path(str(directory), row["parent"]), parents=False) as p:
                assert parent_file == str(p.footer.uuid)
    footers = []
    for row in rows:
        with vhd.Image.open(vdi_path(str(directory), row["uuid"]), parents=False) as image:
            footers.append(image.footer.uuid)
    assert len(set(footers)) == len(footers), "footer uuids must stay unique"


def read_all(store: Store, sr_uuid: str, vdi: str) -> bytes:
    with vhd.Image.open(vdi_path(sr_path(store, sr_uuid), vdi)) as image:
        return image.read(0, image.size)


def write(store: Store, sr_uuid: str, vdi: str, offset: int, data: bytes) -> None:
    with vhd.Image.open(vdi_path(sr_path(store, sr_uuid), vdi), writable=True) as image:
        image.write(offset, data)
        image.flush()


@pytest.fixture
def vdi(store: Store, sr_uuid: str) -> str:
    vdi = create_vdi(store, sr_uuid, SIZE, "data")
    write(store, sr_uuid, vdi, 0, b"A" * 4096)
    write(store, sr_uuid, vdi, 5 * MiB, b"B" * 1000)
    return vdi


def test_snapshot_layout_records_and_delta(store: Store, sr_uuid: str, vdi: str) -> None:
    before = read_all(store, sr_uuid, vdi)
    with vhd.Image.open(vdi_path(sr_path(store, sr_uuid), vdi), parents=False) as image:
        old_footer = image.footer.uuid
    snap = snapshot_vdi(store, vdi)
    v, s = store.get("VDI", vdi), store.get("VDI", snap)
    base = v["parent"]
    b = store.get("VDI", base)
    assert (b["state"], b["managed"], b["is_a_snapshot"], b["parent"]) == ("ready", 0, 0, None)
    assert (s["state"], s["is_a_snapshot"], s["snapshot_of"], s["parent"]) == (
        "ready",
        1,
        vdi,
        base,
    )
    assert (v["managed"], v["is_a_snapshot"], v["snapshot_of"]) == (1, 0, None)
    assert b["virtual_size"] == s["virtual_size"] == SIZE
    path = sr_path(store, sr_uuid)
    with vhd.Image.open(vdi_path(path, base), parents=False) as image:
        assert image.footer.uuid == old_footer
    with vhd.Image.open(vdi_path(path, vdi), parents=False) as image:
        assert image.footer.uuid not in (old_footer, uuidlib.UUID(vdi))
    assert read_all(store, sr_uuid, vdi) == before
    assert read_all(store, sr_uuid, snap) == before
    assert_invariant(store, sr_uuid)

    # V keeps taking writes; the delta against S is only V's new blocks.
    with (
        vhd.Image.open(vdi_path(path, vdi)) as v_image,
        vhd.Image.open(vdi_path(path, snap)) as s_image,
    ):
        assert differing_blocks(v_image, s_image, BLOCK).tolist() == []
    write(store, sr_uuid, vdi, 6 * MiB + 10, b"C" * 100)
    with (
        vhd.Image.open(vdi_path(path, vdi)) as v_image,
        vhd.Image.open(vdi_path(path, snap)) as s_image,
    ):
        assert differing_blocks(v_image, s_image, BLOCK).tolist() == [3]
    assert read_all(store, sr_uuid, snap) == before
    after = read_all(store, sr_uuid, vdi)
    assert after[6 * MiB + 10 : 6 * MiB + 110] == b"C" * 100
    assert after[: 6 * MiB] == before[: 6 * MiB]

    # A second snapshot stacks on the first base.
    snap2 = snapshot_vdi(store, vdi)
    base2 = store.get("VDI", vdi)["parent"]
    assert store.get("VDI", base2)["parent"] == base
    assert read_all(store, sr_uuid, snap2) == after
    assert read_all(store, sr_uuid, snap) == before
    with vhd.Image.open(vdi_path(path, snap2)) as s2, vhd.Image.open(vdi_path(path, snap)) as s1:
        assert differing_blocks(s2, s1, BLOCK).tolist() == [3]
    assert_invariant(store, sr_uuid)

    # Bases stay while they have children; destroying a snapshot leaves its base.
    with pytest.raises(VdiInUse):
        destroy_vdi(store, base)
    destroy_vdi(store, snap)
    assert store.get("VDI", base)["state"] == "ready"
    destroy_vdi(store, snap2)
    destroy_vdi(store, vdi)
    destroy_vdi(store, base2)
    destroy_vdi(store, base)
    assert store.all("VDI") == []
    assert os.listdir(path) == []


def test_snapshot_of_a_missing_vdi(store: Store, sr_uuid: str) -> None:
    with pytest.raises(KeyError):
        snapshot_vdi(store, str(uuidlib.uuid4()))


def test_migration_2_on_a_version_1_database(tmp_path: Path) -> None:
    db_path = str(tmp_path / "old.db")
    db = sqlite3.connect(db_path, isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO sr VALUES ('5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0002', 'sr', '/x', 1, 1)")
    db.execute(
        "INSERT INTO vdi VALUES ('5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0003', "
        "'5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0002', 'd', 512, 'vhd', NULL, 'ready', 1)"
    )
    db.close()
    store = Store.open(db_path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == VERSION
        row = store.get("VDI", "5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0003")
        assert (row["is_a_snapshot"], row["snapshot_of"], row["managed"]) == (0, None, 1)
    finally:
        store.close()


# Crash points: the snapshot is stopped at a step (the in-process undo disabled, as in a crash),
# then reconcile must restore the invariant with V's content intact.


class Crash(BaseException):
    pass


def fail_on(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, nth: int) -> None:
    """Make the ``nth`` call of ``target.name`` crash: after it ran (syncs) or before (others)."""
    original = getattr(target, name)
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            if name.startswith("fsync"):
                original(*args, **kwargs)
            raise Crash(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


CRASH_POINTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    # (1) rows B and S creating, no file yet
    "after rows": lambda mp: fail_on(mp, snapshot.os, "link", 1),
    # (2) B.vhd is a hard link of V.vhd
    "after link": lambda mp: fail_on(mp, files, "fsync_dir", 1),
    # (3) V's new child written as a part file
    "after V part": lambda mp: fail_on(mp, files, "fsync_file", 1),
    # (4) B ready and V's parent B committed, V.vhd still the old file
    "after parent change": lambda mp: fail_on(mp, snapshot.os, "replace", 1),
    # (5) V.vhd is B's child
    "after V rename": lambda mp: fail_on(mp, files, "fsync_dir", 2),
    # (6) S's part written
    "after S part": lambda mp: fail_on(mp, files, "fsync_file", 2),
    # (6) S's file in place, S still creating
    "after S rename": lambda mp: fail_on(mp, files, "fsync_dir", 3),
}


def crashed_snapshot(
    monkeypatch: pytest.MonkeyPatch, store: Store, vdi: str, point: str, *, undo: bool
) -> None:
    with monkeypatch.context() as mp:
        if not undo:
            mp.setattr(snapshot, "_undo_snapshot", lambda *args: None)
        CRASH_POINTS[point](mp)
        with pytest.raises(Crash):
            snapshot_vdi(store, vdi)


def check_after_recovery(
    store: Store, sr_uuid: str, vdi: str, before: bytes, older: frozenset[str] = frozenset()
) -> None:
    """``older``: snapshots taken before ``before`` (not compared)."""
    assert_invariant(store, sr_uuid)
    assert read_all(store, sr_uuid, vdi) == before
    rows = [row for row in store.all("VDI", sr=sr_uuid) if row["uuid"] not in older]
    for row in rows:
        if row["is_a_snapshot"]:
            assert row["snapshot_of"] == vdi
            assert read_all(store, sr_uuid, row["uuid"]) == before
    # What is left still works: V takes writes without touching any snapshot, and can be
    # snapshotted again.
    write(store, sr_uuid, vdi, 7 * MiB, b"D" * 512)
    for row in rows:
        if row["is_a_snapshot"]:
            assert read_all(store, sr_uuid, row["uuid"]) == before
    snap = snapshot_vdi(store, vdi)
    assert read_all(store, sr_uuid, snap) == read_all(store, sr_uuid, vdi)
    assert_invariant(store, sr_uuid)


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_reconcile_after_a_crash(
    monkeypatch: pytest.MonkeyPatch, store: Store, sr_uuid: str, vdi: str, point: str
) -> None:
    before = read_all(store, sr_uuid, vdi)
    crashed_snapshot(monkeypatch, store, vdi, point, undo=False)
    path = sr_path(store, sr_uuid)
    rows = store.all("VDI", sr=sr_uuid)
    base = next(row["uuid"] for row in rows if row["managed"] == 0)
    snap = next(row["uuid"] for row in rows if row["is_a_snapshot"])
    files = set(os.listdir(path))
    expected = {
        "after rows": {f"{vdi}.vhd"},
        "after link": {f"{vdi}.vhd", f"{base}.vhd"},
        "after V part": {f"{vdi}.vhd", f"{base}.vhd", f".{vdi}.vhd.part"},
        "after parent change": {f"{vdi}.vhd", f"{base}.vhd", f".{vdi}.vhd.part"},
        "after V rename": {f"{vdi}.vhd", f"{base}.vhd"},
        "after S part": {f"{vdi}.vhd", f"{base}.vhd", f".{snap}.vhd.part"},
        "after S rename": {f"{vdi}.vhd", f"{base}.vhd", f"{snap}.vhd"},
    }
    assert files == expected[point]
    v_parent = store.get("VDI", vdi)["parent"]
    assert v_parent == (None if point in ("after rows", "after link", "after V part") else base)
    repairs = reconcile(store, sr_uuid)
    assert repairs
    check_after_recovery(store, sr_uuid, vdi, before)
    assert reconcile(store, sr_uuid) == []
    if point == "after parent change":
        # The complete part was put in place: V sits on its new base.
        assert any("put in place" in repair for repair in repairs)


def test_reconcile_after_the_parent_change_with_a_broken_part(
    monkeypatch: pytest.MonkeyPatch, store: Store, sr_uuid: str, vdi: str
) -> None:
    before = read_all(store, sr_uuid, vdi)
    crashed_snapshot(monkeypatch, store, vdi, "after parent change", undo=False)
    path = sr_path(store, sr_uuid)
    base = store.get("VDI", vdi)["parent"]
    assert base is not None
    assert os.path.samefile(vdi_path(path, vdi), vdi_path(path, base))
    part = os.path.join(path, f".{vdi}.vhd.part")
    os.truncate(part, 700)
    repairs = reconcile(store, sr_uuid)
    assert any("parent reset" in repair for repair in repairs)
    assert store.get("VDI", vdi)["parent"] is None
    assert [row["uuid"] for row in store.all("VDI")] == [vdi]
    check_after_recovery(store, sr_uuid, vdi, before)


def test_reconcile_after_the_parent_change_of_a_differencing_vdi(
    monkeypatch: pytest.MonkeyPatch, store: Store, sr_uuid: str, vdi: str
) -> None:
    """V already on a base: an undone second snapshot puts V back on the first base."""
    first = snapshot_vdi(store, vdi)
    first_content = read_all(store, sr_uuid, first)
    first_base = store.get("VDI", vdi)["parent"]
    write(store, sr_uuid, vdi, 3 * MiB, b"E" * 512)
    before = read_all(store, sr_uuid, vdi)
    crashed_snapshot(monkeypatch, store, vdi, "after parent change", undo=False)
    os.unlink(os.path.join(sr_path(store, sr_uuid), f".{vdi}.vhd.part"))
    reconcile(store, sr_uuid)
    assert store.get("VDI", vdi)["parent"] == first_base
    assert read_all(store, sr_uuid, first) == first_content
    check_after_recovery(store, sr_uuid, vdi, before, frozenset({first}))
    assert read_all(store, sr_uuid, first) == first_content


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_an_error_at_any_step_is_undone(
    monkeypatch: pytest.MonkeyPatch, store: Store, sr_uuid: str, vdi: str, point: str
) -> None:
    before = read_all(store, sr_uuid, vdi)
    crashed_snapshot(monkeypatch, store, vdi, point, undo=True)
    assert [r["uuid"] for r in store.all("VDI") if r["is_a_snapshot"]] == []
    assert reconcile(store, sr_uuid) == []
    check_after_recovery(store, sr_uuid, vdi, before)


# The API


async def test_api_snapshot_records(store: Store, sr_uuid: str, vdi: str) -> None:
    store.insert(
        "host",
        {
            "uuid": "5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0001",
            "name_label": "h",
            "address": "::1",
            "primary_address_type": "IPv6",
        },
    )
    store.set_password("root", "pw")
    api = Dispatcher(
        HostServices.open(store, "5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0001", ProcessHypervisor())
    )
    session = await api.run("session.login_with_password", ["root", "pw"])
    ref = f"OpaqueRef:{vdi}"
    snap = api.call("VDI.snapshot", [session, ref])
    snap2 = api.call("VDI.snapshot", [session, ref, {}])
    base2 = f"OpaqueRef:{store.get('VDI', vdi)['parent']}"
    base = f"OpaqueRef:{store.get('VDI', base2[10:])['parent']}"
    record = api.call("VDI.get_record", [session, ref])
    assert sorted(record["snapshots"]) == sorted([snap, snap2])
    assert (record["is_a_snapshot"], record["snapshot_of"], record["managed"]) == (
        False,
        "OpaqueRef:NULL",
        True,
    )
    records = api.call("VDI.get_all_records", [session])
    assert set(records) == {ref, snap, snap2, base, base2}
    assert records[base]["managed"] is False
    assert records[snap]["snapshot_of"] == ref
    for method, params in (
        ("VDI.snapshot", [session, ref, "x"]),
        ("VDI.snapshot", [session, base]),
    ):
        with pytest.raises(ApiError) as info:
            api.call(method, params)
        assert info.value.code in ("FIELD_TYPE_ERROR", "OPERATION_NOT_ALLOWED")
    assert "VDI.snapshot" in api.methods() and "Async.VDI.snapshot" in api.methods()
    api.call("VDI.destroy", [session, ref])
    assert api.call("VDI.get_record", [session, snap])["snapshot_of"] == "OpaqueRef:NULL"


async def test_sdk_snapshot(nursery: trio.Nursery, tmp_path: Path) -> None:
    from functools import partial

    from migrate.addresses import parse_host
    from migrate.http.routing import Router
    from migrate.http.server import serve
    from migrate.rpc.dispatch import register_rpc

    store = Store.open(str(tmp_path / "state.db"))
    host = HOST
    store.insert(
        "host",
        {"uuid": host, "name_label": "h", "address": "::1", "primary_address_type": "IPv6"},
    )
    sr_dir = ensure_sr(store, str(tmp_path / "sr"), "Local storage", default=True)
    directory = sr_path(store, sr_dir)
    store.set_password("root", "pw")
    api = Dispatcher(HostServices.open(store, host, ProcessHypervisor()))
    await nursery.start(api.host.tasks.serve)
    router = Router()
    register_rpc(router, api)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve, router, listeners))
    url = parse_host("127.0.0.1").url("/", port=listeners[0].socket.getsockname()[1])

    def run() -> None:
        session = XenAPI.Session(url.rstrip("/"))
        session.xenapi.login_with_password("root", "pw", "1.0", "tests")
        x = session.xenapi
        try:
            sr_ref = x.SR.get_all()[0]
            vdi = x.VDI.create(
                {"SR": sr_ref, "virtual_size": str(SIZE), "name_label": "disk", "other_config": {}}
            )
            uuid = x.VDI.get_uuid(vdi)
            with vhd.Image.open(vdi_path(directory, uuid), writable=True) as image:
                image.write(MiB, b"xfer" * 1024)
                image.flush()
            with vhd.Image.open(vdi_path(directory, uuid)) as image:
                content = image.read(0, image.size)
            snap = x.VDI.snapshot(vdi, {})
            assert snap != vdi
            snap_uuid = x.VDI.get_uuid(snap)
            record = x.VDI.get_record(snap)
            assert record["is_a_snapshot"] is True
            assert record["snapshot_of"] == vdi
            assert record["managed"] is True
            assert record["virtual_size"] == str(SIZE)
            v_record = x.VDI.get_record(vdi)
            assert v_record["snapshots"] == [snap]
            assert v_record["is_a_snapshot"] is False
            assert v_record["snapshot_of"] == "OpaqueRef:NULL"
            base = "OpaqueRef:" + v_record["sm_config"]["vhd-parent"]
            assert record["sm_config"] == v_record["sm_config"]
            base_record = x.VDI.get_record(base)
            assert base_record["managed"] is False
            assert base_record["is_a_snapshot"] is False
            assert sorted(x.VDI.get_all()) == sorted([vdi, snap, base])
            with vhd.Image.open(vdi_path(directory, snap_uuid)) as image:
                assert image.read(0, image.size) == content
            with vhd.Image.open(vdi_path(directory, uuid)) as image:
                assert image.read(0, image.size) == content
            # Async, with the SDK's two-parameter form.
            task = x.Async.VDI.snapshot(vdi)
            wait_until_sync(lambda: x.task.get_status(task) != "pending", what="the snapshot task")
            assert x.task.get_status(task) == "success"
            snap2 = x.task.get_result(task)
            snap2 = snap2.replace("<value>", "").replace("</value>", "")
            assert x.VDI.get_record(snap2)["snapshot_of"] == vdi
            base2 = "OpaqueRef:" + x.VDI.get_record(vdi)["sm_config"]["vhd-parent"]

            assert failure(lambda: x.VDI.destroy(base)) == ["VDI_IN_USE", base]
            x.VDI.destroy(snap)
            assert x.VDI.get_record(base)["managed"] is False
            x.VDI.destroy(snap2)
            x.VDI.destroy(vdi)
            x.VDI.destroy(base2)
            x.VDI.destroy(base)
            assert x.VDI.get_all() == []
            assert os.listdir(directory) == []
        finally:
            x.session.logout()

    try:
        with trio.fail_after(60):
            await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    finally:
        store.close()
