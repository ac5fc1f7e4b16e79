"""Storage repositories: a directory of VDI files ``<uuid>.vhd``, each with its ``vdi`` row.

The invariant, kept across crashes: every ``ready`` row has its file and every ``<uuid>.vhd``
has its row. Creation writes the row (``creating``) before the file; destruction marks the row
(``destroying``) before removing the file; :mod:`migrate.storage.reconcile` finishes or undoes
what a crash interrupted. Plain synchronous code, run inside the host's database calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid as uuidlib
from typing import Any

import vhd
from migrate.state.store import Store
from migrate.storage import files

SUFFIX = ".vhd"
PART_SUFFIX = ".vhd.part"
IDENTITY_FILE = ".xfer-sr.json"
"""In a shared SR's directory: its identity, ``{"uuid": ..., "shared": true}``, the same for
every host that attaches the directory."""


class VdiInUse(Exception):
    """The VDI cannot be destroyed: other VDIs name it as their parent."""


def check_uuid(uuid: str) -> str:
    """``uuid`` if it is a lowercase hyphenated UUID (as file names hold them); ValueError
    otherwise."""
    if str(uuidlib.UUID(uuid)) != uuid:
        raise ValueError(f"{uuid!r} is not a lowercase hyphenated UUID")
    return uuid


def part_file(sr_path: str, uuid: str) -> str:
    """Where the next file of VDI ``uuid`` of the SR at ``sr_path`` is written before it
    replaces the current one."""
    return os.path.join(sr_path, f".{check_uuid(uuid)}{PART_SUFFIX}")


def vdi_path(sr_path: str, uuid: str) -> str:
    """The file of VDI ``uuid`` in the SR directory ``sr_path``."""
    return os.path.join(sr_path, f"{check_uuid(uuid)}{SUFFIX}")


class SrIdentityError(ValueError):
    """A shared SR's identity file that cannot be read or does not fit this host's records."""


def _read_identity(path: str) -> str | None:
    """The uuid a shared SR directory ``path`` records (None when it records none)."""
    name = os.path.join(path, IDENTITY_FILE)
    try:
        with open(name, "rb") as f:
            document = json.loads(f.read(4096))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SrIdentityError(f"{name}: not an SR identity ({e})") from None
    if not isinstance(document, dict) or document.get("shared") is not True:
        raise SrIdentityError(f"{name}: not a shared SR's identity")
    value = document.get("uuid")
    try:
        return check_uuid(str(value))
    except ValueError:
        raise SrIdentityError(f"{name}: uuid {value!r} is not a lowercase uuid") from None


def shared_identity(path: str, proposed: str) -> str:
    """The uuid of the shared SR in directory ``path``: the one its identity file records,
    or ``proposed``, recorded there first. The file is written under a temporary name, synced
    and linked into place, so that of two hosts attaching the directory at once one writes
    it and the other adopts it."""
    recorded = _read_identity(path)
    if recorded is not None:
        return recorded
    final = os.path.join(path, IDENTITY_FILE)
    temporary = os.path.join(path, f"{IDENTITY_FILE}.{uuidlib.uuid4()}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8") as f:
            json.dump({"uuid": check_uuid(proposed), "shared": True}, f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another host was first: its uuid wins
            os.link(temporary, final)
    finally:
        files.unlink(temporary)
    files.fsync_dir(path)
    recorded = _read_identity(path)
    if recorded is None:
        raise SrIdentityError(f"{final}: vanished as it was written")
    return recorded


def ensure_sr(
    store: Store, path: str, name_label: str, *, default: bool = False, shared: bool = False
) -> str:
    """The uuid of the SR whose directory is ``path``, creating directory and row if needed.

    The directory is created with mode 0o700 and recorded by its canonical absolute path. With
    ``default`` this SR becomes the only default one. ``shared`` (or an identity file in the
    directory, :data:`IDENTITY_FILE`) makes it an SR other hosts attach too: its uuid is the
    one the directory records (written there by the first host, from this host's row if it
    had one), and its row is marked shared. SrIdentityError when that uuid is already another
    SR's here.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    path = os.path.realpath(path)
    rows = store.all("SR", path=path)
    if shared or os.path.exists(os.path.join(path, IDENTITY_FILE)):
        sr_uuid = shared_identity(path, str(rows[0]["uuid"]) if rows else str(uuidlib.uuid4()))
        if rows and rows[0]["uuid"] != sr_uuid:
            raise SrIdentityError(
                f"{path} is SR {sr_uuid} on the hosts sharing it, SR {rows[0]['uuid']} here"
            )
        clash = [row for row in store.all("SR", uuid=sr_uuid) if row["path"] != path]
        if clash:
            raise SrIdentityError(f"SR {sr_uuid} of {path} is already at {clash[0]['path']} here")
        if not rows:
            with store.change():
                fields = {"uuid": sr_uuid, "name_label": name_label, "path": path, "shared": 1}
                store.insert("SR", {**fields, "is_default": 0})
            rows = store.all("SR", path=path)
        elif not rows[0]["shared"]:
            with store.change():
                store.update("SR", sr_uuid, {"shared": 1})
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


def is_shared(store: Store, sr_uuid: str) -> bool:
    """Whether SR ``sr_uuid`` is shared with other hosts."""
    return bool(store.get("SR", sr_uuid)["shared"])


def part_path(store: Store, vdi_uuid: str) -> str:
    """Where the next file of VDI ``vdi_uuid`` is written before it replaces the current one
    (removed by :func:`~migrate.storage.reconcile.reconcile` if a crash leaves it)."""
    sr_path = store.get("SR", store.get("VDI", vdi_uuid)["sr"])["path"]
    return part_file(sr_path, vdi_uuid)


def begin_vdi(store: Store, sr_uuid: str, name_label: str, virtual_size: int = 0) -> str:
    """Record a new VDI in SR ``sr_uuid`` as ``creating`` (invisible until
    :func:`publish_vdi`, removed by :func:`abandon_vdi` or, after a crash, by reconciling the
    SR); its uuid. Its file is then written at :func:`part_path`."""
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
    files.publish(part_file(sr_path, vdi_uuid), vdi_path(sr_path, vdi_uuid), sr_path)
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
        for leftover in (part_file(sr_path, vdi_uuid), vdi_path(sr_path, vdi_uuid)):
            with contextlib.suppress(OSError):
                files.unlink(leftover)
        store.delete("VDI", vdi_uuid)
    else:
        with contextlib.suppress(OSError):
            files.unlink(part_file(sr_path, vdi_uuid))
    with contextlib.suppress(OSError):
        files.fsync_dir(sr_path)


def create_vdi(
    store: Store, sr_uuid: str, virtual_size: int, name_label: str, *, fixed: bool = False
) -> str:
    """Create an empty dynamic VDI of ``virtual_size`` bytes in SR ``sr_uuid`` (``fixed``:
    a fixed VHD, its data raw in place, as a guest's block backend serves it); its uuid.

    Row (``creating``) first, then the file under a temporary name, synced and renamed, then the
    row ``ready``. On error the partial file and the row are removed and the error re-raised
    (an invalid size, one that is not whole sectors among them, is a :class:`vhd.VhdError`).
    """
    uuid = begin_vdi(store, sr_uuid, name_label, virtual_size)
    try:
        vhd.create(part_path(store, uuid), virtual_size, fixed=fixed, uuid=uuidlib.UUID(uuid))
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
    files.unlink(vdi_path(sr_path, vdi_uuid))
    files.fsync_dir(sr_path)
    store.delete("VDI", vdi_uuid)


def ready_vdis(store: Store, sr_uuid: str) -> list[dict[str, Any]]:
    """The VDI rows of SR ``sr_uuid`` in state ``ready``, in uuid order."""
    return store.all("VDI", sr=sr_uuid, state="ready")


def vdi_file_size(sr_path: str, uuid: str) -> int:
    """The bytes the file of VDI ``uuid`` takes in the SR at ``sr_path`` (0 if it is gone)."""
    try:
        return os.stat(vdi_path(sr_path, uuid)).st_size
    except OSError:
        return 0
