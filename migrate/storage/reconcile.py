"""Reconciling an SR with its rows after a crash: every operation an earlier run left
half-done is finished or undone, so that every ready row has its file and every file its row.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import vhd
from migrate.state.store import NotFound, Store
from migrate.storage import files
from migrate.storage.snapshot import repair_snapshots
from migrate.storage.sr import PART_SUFFIX, SUFFIX, check_uuid, part_file, vdi_path

log = logging.getLogger("xfer.storage")


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
            removed = [p for p in (final, part_file(sr_path, uuid)) if files.unlink(p)]
            what = f"its file {', '.join(removed)} and " if removed else ""
            repairs.append(f"VDI {uuid}: creation interrupted; removed {what}its row")
        elif state == "destroying":
            what = "its file and " if files.unlink(final) else ""
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


def _repair_files(store: Store, sr_uuid: str, sr_path: str, shared: bool) -> list[str]:
    """Remove ``.part`` leftovers (not in a shared SR: they may be another host's writes in
    progress) and introduce ``<uuid>.vhd`` files that have no row."""
    repairs: list[str] = []
    recorded = {row["uuid"] for row in store.all("VDI", sr=sr_uuid)}
    for name in sorted(os.listdir(sr_path)):
        path = os.path.join(sr_path, name)
        if name.startswith(".") and name.endswith(PART_SUFFIX):
            if not shared and files.unlink(path):
                repairs.append(f"removed partial file {path}")
            continue
        uuid = name.removesuffix(SUFFIX)
        if uuid == name or uuid in recorded:
            continue
        try:
            check_uuid(uuid)
        except ValueError:
            continue
        repairs.append(_introduce(store, sr_uuid, path, uuid))
    for repair in repairs:
        log.warning("%s", repair)
    return repairs


def reconcile(store: Store, sr_uuid: str) -> list[str]:
    """Restore SR ``sr_uuid``'s invariant after a crash; a description of each repair.

    A snapshot interrupted after V's row named its new base is finished if V's new file is
    complete, undone otherwise (:mod:`migrate.storage.snapshot`). Rows ``creating`` or
    ``destroying`` are finished off (file and row removed); ``ready`` rows whose file is
    missing are deleted; ``<uuid>.vhd`` files without a row are introduced as ready VDIs
    (files that are not VHDs are reported and left alone); ``.part`` leftovers are removed.
    Run at start-up, before any VDI of the SR is used.

    In a shared SR only what this host's own rows say it was doing is finished or undone
    (creations, destructions, snapshots it began); the files of VDIs other hosts created are
    introduced, as xapi's ``SR.scan`` does, never removed, and ``.part`` files are left alone
    (another host may be writing one; this host's next write of the VDI replaces its own).
    """
    sr = store.get("SR", sr_uuid)
    sr_path = sr["path"]
    repairs = repair_snapshots(store, sr_path, store.all("VDI", sr=sr_uuid))
    repairs += _repair_rows(store, sr_path, store.all("VDI", sr=sr_uuid))
    repairs += _repair_files(store, sr_uuid, sr_path, bool(sr["shared"]))
    if repairs:
        files.fsync_dir(sr_path)
    return repairs


def introduce(store: Store, sr_uuid: str, vdi_uuid: str) -> str | None:
    """Record VDI ``vdi_uuid``, whose file another host made in the shared SR ``sr_uuid``, as
    ready here (``SR.scan`` for one VDI: a migration names it); None once it is recorded,
    else why it cannot be (no such file, not a VHD, a VDI of another SR)."""
    sr_path = store.get("SR", sr_uuid)["path"]
    path = vdi_path(sr_path, check_uuid(vdi_uuid))
    if not os.path.exists(path):
        return f"SR {sr_uuid} has no file {path}"
    with store.change():
        repair = _introduce(store, sr_uuid, path, vdi_uuid)
    if not repair.startswith(f"VDI {vdi_uuid}: introduced"):
        return repair
    log.info("%s", repair)
    return None
