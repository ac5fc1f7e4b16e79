"""Storage repositories: a directory of VDI files ``<uuid>.vhd``, each with its ``vdi`` row.

The invariant, kept across crashes: every ``ready`` row has its file and every ``<uuid>.vhd``
has its row. Creation writes the row (``creating``) before the file; destruction marks the row
(``destroying``) before removing the file; :func:`reconcile` finishes or undoes what a crash
interrupted. Plain synchronous code: the daemon calls it from a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid as uuidlib
from typing import Any

import vhd
from migrate.state.store import NotFound, Store

log = logging.getLogger("xfer.storage")

SUFFIX = ".vhd"
PART_SUFFIX = ".vhd.part"


class VdiInUse(Exception):
    """The VDI cannot be destroyed: other VDIs name it as their parent."""


def _check_uuid(uuid: str) -> str:
    if str(uuidlib.UUID(uuid)) != uuid:
        raise ValueError(f"{uuid!r} is not a lowercase hyphenated UUID")
    return uuid


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(part: str, final: str, directory: str) -> None:
    """Put the complete file ``part`` in place as ``final``: synced, renamed, directory synced."""
    _fsync_file(part)
    os.replace(part, final)
    _fsync_dir(directory)


def _unlink(path: str) -> bool:
    """Remove ``path``; whether there was a file to remove."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _part_path(sr_path: str, uuid: str) -> str:
    return os.path.join(sr_path, f".{_check_uuid(uuid)}{PART_SUFFIX}")


def vdi_path(sr_path: str, uuid: str) -> str:
    """The file of VDI ``uuid`` in the SR directory ``sr_path``."""
    return os.path.join(sr_path, f"{_check_uuid(uuid)}{SUFFIX}")


def ensure_sr(store: Store, path: str, name_label: str, *, default: bool = False) -> str:
    """The uuid of the SR whose directory is ``path``, creating directory and row if needed.

    The directory is created with mode 0o700 and recorded by its canonical absolute path. With
    ``default`` this SR becomes the only default one.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    path = os.path.realpath(path)
    rows = store.all("SR", path=path)
    others = [row["uuid"] for row in store.all("SR", is_default=1) if row["path"] != path]
    if rows and not (default and (others or not rows[0]["is_default"])):
        return str(rows[0]["uuid"])
    with store.change():
        if rows:
            sr_uuid = str(rows[0]["uuid"])
            store.update("SR", sr_uuid, {"is_default": 1})
        else:
            sr_uuid = str(uuidlib.uuid4())
            fields = {"uuid": sr_uuid, "name_label": name_label, "path": path}
            store.insert("SR", {**fields, "is_default": int(default)})
        if default:
            for other in others:
                store.update("SR", other, {"is_default": 0})
    return sr_uuid


def part_path(store: Store, vdi_uuid: str) -> str:
    """Where the next file of VDI ``vdi_uuid`` is written before it replaces the current one
    (removed by :func:`reconcile` if a crash leaves it)."""
    sr_path = store.get("SR", store.get("VDI", vdi_uuid)["sr"])["path"]
    return _part_path(sr_path, vdi_uuid)


def begin_vdi(store: Store, sr_uuid: str, name_label: str, virtual_size: int = 0) -> str:
    """Record a new VDI in SR ``sr_uuid`` as ``creating`` (invisible until
    :func:`publish_vdi`, removed by :func:`abandon_vdi` or by :func:`reconcile` after a crash);
    its uuid. Its file is then written at :func:`part_path`."""
    uuid = str(uuidlib.uuid4())
    store.insert(
        "VDI",
        {
            "uuid": uuid,
            "sr": sr_uuid,
            "name_label": name_label,
            "virtual_size": virtual_size,
            "format": "vhd",
            "parent": None,
            "state": "creating",
        },
    )
    return uuid


def publish_vdi(store: Store, vdi_uuid: str, virtual_size: int | None = None) -> None:
    """Put the complete part file of VDI ``vdi_uuid`` in place of its file (synced, renamed,
    directory synced); a VDI still ``creating`` becomes ``ready`` (with ``virtual_size``)."""
    row = store.get("VDI", vdi_uuid)
    sr_path = store.get("SR", row["sr"])["path"]
    _publish(_part_path(sr_path, vdi_uuid), vdi_path(sr_path, vdi_uuid), sr_path)
    fields: dict[str, Any] = {}
    if row["state"] == "creating":
        fields["state"] = "ready"
    if virtual_size is not None and virtual_size != row["virtual_size"]:
        fields["virtual_size"] = virtual_size
    if fields:
        store.update("VDI", vdi_uuid, fields)


def abandon_vdi(store: Store, vdi_uuid: str) -> None:
    """Remove the part file of VDI ``vdi_uuid``; a VDI still ``creating`` is removed with it,
    a ready one keeps its file and row as they were."""
    row = store.get("VDI", vdi_uuid)
    sr_path = store.get("SR", row["sr"])["path"]
    if row["state"] == "creating":
        for leftover in (_part_path(sr_path, vdi_uuid), vdi_path(sr_path, vdi_uuid)):
            with contextlib.suppress(OSError):
                _unlink(leftover)
        store.delete("VDI", vdi_uuid)
    else:
        with contextlib.suppress(OSError):
            _unlink(_part_path(sr_path, vdi_uuid))
    with contextlib.suppress(OSError):
        _fsync_dir(sr_path)


def create_vdi(store: Store, sr_uuid: str, virtual_size: int, name_label: str) -> str:
    """Create an empty dynamic VDI of ``virtual_size`` bytes in SR ``sr_uuid``; its uuid.

    Row (``creating``) first, then the file under a temporary name, synced and renamed, then the
    row ``ready``. On error the partial file and the row are removed and the error re-raised
    (an invalid size is a :class:`vhd.VhdError`).
    """
    uuid = begin_vdi(store, sr_uuid, name_label, virtual_size)
    try:
        vhd.create(part_path(store, uuid), virtual_size, uuid=uuidlib.UUID(uuid))
        publish_vdi(store, uuid)
    except BaseException:
        abandon_vdi(store, uuid)
        raise
    return uuid


def destroy_vdi(store: Store, vdi_uuid: str) -> None:
    """Destroy VDI ``vdi_uuid``: row ``destroying``, file removed, row deleted.

    :class:`VdiInUse` if other VDIs name it as their parent; NotFound if there is no such VDI.
    """
    with store.change():
        row = store.get("VDI", vdi_uuid)
        children = store.all("VDI", parent=vdi_uuid)
        if children:
            names = ", ".join(child["uuid"] for child in children)
            raise VdiInUse(f"VDI {vdi_uuid} is the parent of {names}")
        store.update("VDI", vdi_uuid, {"state": "destroying"})
    sr_path = store.get("SR", row["sr"])["path"]
    _unlink(vdi_path(sr_path, vdi_uuid))
    _fsync_dir(sr_path)
    store.delete("VDI", vdi_uuid)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _valid_child(path: str) -> bool:
    """Whether ``path`` is a complete image whose parent chain opens."""
    try:
        with vhd.Image.open(path):
            return True
    except (vhd.VhdError, OSError):
        return False


def snapshot_vdi(store: Store, vdi_uuid: str) -> str:
    """Snapshot the ready VDI ``vdi_uuid`` (V) as xapi's file SRs do; the snapshot's uuid.

    V's file becomes the hidden base B (``managed`` 0, same footer uuid), V's file an empty
    differencing child of B with a fresh footer uuid (V keeps its uuid and takes the writes),
    and the snapshot S another empty child of B. In crash order: rows B and S ``creating``;
    ``V.vhd`` hard-linked as ``B.vhd``; V's child written as a part file; B ready and V's
    parent B in one change; the part renamed over ``V.vhd``; S's file; S ready. Each step is
    synced; :func:`reconcile` finishes or undoes an interrupted snapshot. NotFound if there is
    no such ready VDI.
    """
    row = store.get("VDI", vdi_uuid)
    if row["state"] != "ready":
        raise NotFound(f"VDI {vdi_uuid}")
    sr_path = store.get("SR", row["sr"])["path"]
    base, snap = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    common = {
        "sr": row["sr"],
        "virtual_size": row["virtual_size"],
        "format": row["format"],
        "state": "creating",
    }
    with store.change():
        store.insert(
            "VDI",
            {
                **common,
                "uuid": base,
                "name_label": f"base copy of {row['name_label']}",
                "parent": row["parent"],
                "managed": 0,
            },
        )
        store.insert(
            "VDI",
            {
                **common,
                "uuid": snap,
                "name_label": row["name_label"],
                "parent": base,
                "is_a_snapshot": 1,
                "snapshot_of": vdi_uuid,
            },
        )
    v_file, v_part = vdi_path(sr_path, vdi_uuid), _part_path(sr_path, vdi_uuid)
    b_file = vdi_path(sr_path, base)
    s_file, s_part = vdi_path(sr_path, snap), _part_path(sr_path, snap)
    try:
        os.link(v_file, b_file)
        _fsync_dir(sr_path)
        vhd.create_differencing(v_part, b_file, uuid=uuidlib.uuid4())
        _fsync_file(v_part)
        with store.change():
            store.update("VDI", base, {"state": "ready"})
            store.update("VDI", vdi_uuid, {"parent": base})
        os.replace(v_part, v_file)
        _fsync_dir(sr_path)
        vhd.create_differencing(s_part, b_file, uuid=uuidlib.UUID(snap))
        _publish(s_part, s_file, sr_path)
        store.update("VDI", snap, {"state": "ready"})
    except BaseException:
        with contextlib.suppress(Exception):
            _undo_snapshot(store, sr_path, vdi_uuid, base, snap)
        raise
    return snap


def _undo_snapshot(store: Store, sr_path: str, vdi_uuid: str, base: str, snap: str) -> None:
    """After an error in :func:`snapshot_vdi`: V as before the snapshot (or, once V's file is
    B's child, V kept on B), S and an unused B removed."""
    for path in (_part_path(sr_path, snap), vdi_path(sr_path, snap)):
        _unlink(path)
    with contextlib.suppress(NotFound):
        store.delete("VDI", snap)
    _relink(store, sr_path, store.get("VDI", vdi_uuid), finish=False)
    if store.get("VDI", vdi_uuid)["parent"] != base:
        _unlink(vdi_path(sr_path, base))
        with contextlib.suppress(NotFound):
            store.delete("VDI", base)
    _unlink(_part_path(sr_path, vdi_uuid))
    _fsync_dir(sr_path)


def _relink(store: Store, sr_path: str, row: dict[str, Any], *, finish: bool) -> str | None:
    """A snapshot interrupted between V's row naming B its parent and V's new file replacing
    the old one (so ``V.vhd`` and ``B.vhd`` are still one file): with ``finish`` and a
    complete part file, rename it over ``V.vhd``; otherwise V's parent back to B's, and B
    marked ``destroying`` unless other ready VDIs need it. The repair done, if any."""
    uuid, base = row["uuid"], row["parent"]
    if base is None or not _same_file(vdi_path(sr_path, uuid), vdi_path(sr_path, base)):
        return None
    part = _part_path(sr_path, uuid)
    if finish and os.path.exists(part) and _valid_child(part):
        _publish(part, vdi_path(sr_path, uuid), sr_path)
        return f"VDI {uuid}: snapshot interrupted; its new file over base {base} put in place"
    base_row = store.get("VDI", base)
    with store.change():
        store.update("VDI", uuid, {"parent": base_row["parent"]})
        others = [
            child["uuid"]
            for child in store.all("VDI", parent=base, state="ready")
            if child["uuid"] != uuid
        ]
        if not others:
            store.update("VDI", base, {"state": "destroying"})
    _unlink(part)
    parent = base_row["parent"]
    return f"VDI {uuid}: snapshot interrupted; parent reset to {parent}, base {base} dropped"


def _repair_snapshots(store: Store, sr_path: str, rows: list[dict[str, Any]]) -> list[str]:
    """Finish (or undo) the snapshots a crash interrupted after V's row named its new base."""
    repairs = []
    for row in rows:
        if row["state"] == "ready":
            repair = _relink(store, sr_path, row, finish=True)
            if repair is not None:
                log.warning("%s", repair)
                repairs.append(repair)
    return repairs


def ready_vdis(store: Store, sr_uuid: str) -> list[dict[str, Any]]:
    """The VDI rows of SR ``sr_uuid`` in state ``ready``, in uuid order."""
    return store.all("VDI", sr=sr_uuid, state="ready")


def _depth(row: dict[str, Any], parents: dict[str, str | None]) -> int:
    depth, parent = 0, row["parent"]
    while parent is not None and depth <= len(parents):
        depth, parent = depth + 1, parents.get(parent)
    return depth


def _repair_rows(store: Store, sr_path: str, rows: list[dict[str, Any]]) -> list[str]:
    """Delete the rows a crash (or a removal behind our back) left without a valid file."""
    repairs: list[str] = []
    parents = {row["uuid"]: row["parent"] for row in store.all("VDI")}
    # Children before parents, so that a parent's row is free of references when its turn comes.
    for row in sorted(rows, key=lambda r: -_depth(r, parents)):
        uuid, state = row["uuid"], row["state"]
        final = vdi_path(sr_path, uuid)
        if state == "ready" and os.path.exists(final):
            continue
        children = [child["uuid"] for child in store.all("VDI", parent=uuid)]
        if children:
            repairs.append(f"VDI {uuid} ({state}) kept: parent of {', '.join(children)}")
            log.error("%s", repairs[-1])
            continue
        if state == "creating":
            removed = [p for p in (final, _part_path(sr_path, uuid)) if _unlink(p)]
            what = f"its file {', '.join(removed)} and " if removed else ""
            repairs.append(f"VDI {uuid}: creation interrupted; removed {what}its row")
        elif state == "destroying":
            what = "its file and " if _unlink(final) else ""
            repairs.append(f"VDI {uuid}: destruction interrupted; removed {what}its row")
        else:
            repairs.append(f"VDI {uuid}: file {final} was removed behind our back; row deleted")
        log.warning("%s", repairs[-1])
        store.delete("VDI", uuid)
    return repairs


def _introduce(store: Store, sr_uuid: str, path: str, uuid: str) -> str:
    """Record the VHD file ``path`` as a ready VDI; the repair done, or why it was not."""
    try:
        existing = store.get("VDI", uuid)
    except NotFound:
        pass
    else:
        return f"file {path} left alone: VDI {uuid} belongs to SR {existing['sr']}"
    try:
        with vhd.Image.open(path, parents=False) as image:
            size = image.size
    except (vhd.VhdError, OSError) as e:
        return f"file {path} left alone: not a VHD ({e})"
    store.insert(
        "VDI",
        {
            "uuid": uuid,
            "sr": sr_uuid,
            "name_label": f"introduced {uuid}",
            "virtual_size": size,
            "format": "vhd",
            "parent": None,
            "state": "ready",
        },
    )
    return f"VDI {uuid}: introduced file {path} of {size} bytes"


def _repair_files(store: Store, sr_uuid: str, sr_path: str) -> list[str]:
    """Remove ``.part`` leftovers and introduce ``<uuid>.vhd`` files that have no row."""
    repairs: list[str] = []
    recorded = {row["uuid"] for row in store.all("VDI", sr=sr_uuid)}
    for name in sorted(os.listdir(sr_path)):
        path = os.path.join(sr_path, name)
        if name.startswith(".") and name.endswith(PART_SUFFIX):
            if _unlink(path):
                repairs.append(f"removed partial file {path}")
            continue
        uuid = name.removesuffix(SUFFIX)
        if uuid == name or uuid in recorded:
            continue
        try:
            _check_uuid(uuid)
        except ValueError:
            continue
        repairs.append(_introduce(store, sr_uuid, path, uuid))
    for repair in repairs:
        log.warning("%s", repair)
    return repairs


def reconcile(store: Store, sr_uuid: str) -> list[str]:
    """Restore SR ``sr_uuid``'s invariant after a crash; a description of each repair.

    A snapshot interrupted after V's row named its new base is finished if V's new file is
    complete, undone otherwise (see :func:`snapshot_vdi`). Rows ``creating`` or
    ``destroying`` are finished off (file and row removed); ``ready`` rows whose file is
    missing are deleted; ``<uuid>.vhd`` files without a row are introduced as ready VDIs
    (files that are not VHDs are reported and left alone); ``.part`` leftovers are removed.
    Run at start-up, before any VDI of the SR is used.
    """
    sr_path = store.get("SR", sr_uuid)["path"]
    repairs = _repair_snapshots(store, sr_path, store.all("VDI", sr=sr_uuid))
    repairs += _repair_rows(store, sr_path, store.all("VDI", sr=sr_uuid))
    repairs += _repair_files(store, sr_uuid, sr_path)
    if repairs:
        _fsync_dir(sr_path)
    return repairs
