"""Snapshots as xapi's file SRs take them: the VDI's content so far becomes a hidden base that
the VDI and its snapshot both continue from as differencing children, so a delta between them
is metadata only.

Each step is ordered and synced so that a crash leaves either the snapshot whole or the VDI as
before; :func:`repair_snapshots` (run by :mod:`migrate.storage.reconcile`) finishes or undoes
an interrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid as uuidlib
from typing import Any

import vhd
from migrate.state.store import NotFound, Store
from migrate.storage import files
from migrate.storage.sr import part_file, vdi_path

log = logging.getLogger("xfer.storage")


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
    synced; :func:`repair_snapshots` finishes or undoes an interrupted one. NotFound if there is
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
    v_file, v_part = vdi_path(sr_path, vdi_uuid), part_file(sr_path, vdi_uuid)
    b_file = vdi_path(sr_path, base)
    s_file, s_part = vdi_path(sr_path, snap), part_file(sr_path, snap)
    try:
        os.link(v_file, b_file)
        files.fsync_dir(sr_path)
        vhd.create_differencing(v_part, b_file, uuid=uuidlib.uuid4())
        files.fsync_file(v_part)
        with store.change():
            store.update("VDI", base, {"state": "ready"})
            store.update("VDI", vdi_uuid, {"parent": base})
        os.replace(v_part, v_file)
        files.fsync_dir(sr_path)
        vhd.create_differencing(s_part, b_file, uuid=uuidlib.UUID(snap))
        files.publish(s_part, s_file, sr_path)
        store.update("VDI", snap, {"state": "ready"})
    except BaseException:
        with contextlib.suppress(Exception):
            _undo_snapshot(store, sr_path, vdi_uuid, base, snap)
        raise
    return snap


def _undo_snapshot(store: Store, sr_path: str, vdi_uuid: str, base: str, snap: str) -> None:
    """After an error in :func:`snapshot_vdi`: V as before the snapshot (or, once V's file is
    B's child, V kept on B), S and an unused B removed."""
    for path in (part_file(sr_path, snap), vdi_path(sr_path, snap)):
        files.unlink(path)
    with contextlib.suppress(NotFound):
        store.delete("VDI", snap)
    _relink(store, sr_path, store.get("VDI", vdi_uuid), finish=False)
    if store.get("VDI", vdi_uuid)["parent"] != base:
        files.unlink(vdi_path(sr_path, base))
        with contextlib.suppress(NotFound):
            store.delete("VDI", base)
    files.unlink(part_file(sr_path, vdi_uuid))
    files.fsync_dir(sr_path)


def _relink(store: Store, sr_path: str, row: dict[str, Any], *, finish: bool) -> str | None:
    """A snapshot interrupted between V's row naming B its parent and V's new file replacing
    the old one (so ``V.vhd`` and ``B.vhd`` are still one file): with ``finish`` and a
    complete part file, rename it over ``V.vhd``; otherwise V's parent back to B's, and B
    marked ``destroying`` unless other ready VDIs need it. The repair done, if any."""
    uuid, base = row["uuid"], row["parent"]
    if base is None or not files.same_file(vdi_path(sr_path, uuid), vdi_path(sr_path, base)):
        return None
    part = part_file(sr_path, uuid)
    if finish and os.path.exists(part) and _valid_child(part):
        files.publish(part, vdi_path(sr_path, uuid), sr_path)
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
    files.unlink(part)
    parent = base_row["parent"]
    return f"VDI {uuid}: snapshot interrupted; parent reset to {parent}, base {base} dropped"


def repair_snapshots(store: Store, sr_path: str, rows: list[dict[str, Any]]) -> list[str]:
    """Finish (or undo) the snapshots a crash interrupted after V's row named its new base."""
    repairs = []
    for row in rows:
        if row["state"] == "ready":
            repair = _relink(store, sr_path, row, finish=True)
            if repair is not None:
                log.warning("%s", repair)
                repairs.append(repair)
    return repairs
