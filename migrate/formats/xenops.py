"""The pure parts of xenopsd's migration handshake: paths, cookies, sync messages, VM metadata.

The source sends ``PUT <xenops path>/migrate/vm/<id>`` and ``PUT .../migrate/mem/<id>`` with
the cookies below; after each request head the sockets carry raw bytes. On the vm connection
each step is acknowledged by a sync message: a 2-byte big-endian length, 0 for success, else
that many bytes of UTF-8 error text. An I/O layer reads one like this::

    length = parse_sync(await receive_exactly(SYNC_SIZE))
    if length:
        raise SomeError(sync_error_text(await receive_exactly(length)))

The VM's metadata travels as JSON (:class:`VmMetadata`) in the suspend image's Xenops record.
"""

from __future__ import annotations

import json
import re
import struct
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "COOKIE_DBG",
    "COOKIE_FINAL_ID",
    "COOKIE_MEMORY_LIMIT",
    "COOKIE_SESSION_ID",
    "METADATA_MAX",
    "SYNC_SIZE",
    "XENOPS_PATH",
    "MetadataError",
    "Vbd",
    "VmMetadata",
    "migrate_mem_path",
    "migrate_vm_path",
    "parse_migrate_path",
    "parse_sync",
    "sync_error",
    "sync_error_text",
    "sync_ok",
]

XENOPS_PATH = "/services/xenops"
"""Where a host serves xenopsd's face (the ``xenops`` URL of the dest map)."""

REPORT_KEY = "xfer_migration"
"""The key of a migration task's ``other_config`` that holds its rounds report (JSON text):
written by the source as the migration goes, read by ``xfer migrate``."""

COOKIE_SESSION_ID = "session_id"
"""The destination session the source authenticates with."""
COOKIE_FINAL_ID = "final_id"
"""The VM's uuid on the destination."""
COOKIE_DBG = "dbg"
"""A debug tag naming the operation in both hosts' logs."""
COOKIE_MEMORY_LIMIT = "memory_limit"
"""The memory the destination reserves for the VM, in bytes."""

_SYNC = struct.Struct(">H")
SYNC_SIZE = _SYNC.size
SYNC_TEXT_MAX = 0xFFFF
"""Longest error text a sync message carries, in bytes."""

METADATA_MAX = 1 << 20
"""Largest VM metadata document accepted (bytes of JSON)."""
PAGE_SIZE = 4096
VCPUS_MAX = 1024
NAME_MAX = 1024

_DEVICE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def sync_ok() -> bytes:
    """The success sync message."""
    return _SYNC.pack(0)


def sync_error(text: str) -> bytes:
    """An error sync message carrying ``text`` (UTF-8, cut to 65535 bytes on a character
    boundary; an empty text becomes "error", since length 0 would mean success)."""
    data = text.encode("utf-8")[:SYNC_TEXT_MAX].decode("utf-8", "ignore").encode("utf-8")
    data = data or b"error"
    return _SYNC.pack(len(data)) + data


def parse_sync(data: bytes) -> int:
    """The length a 2-byte sync message announces: 0 for success, else the error text's."""
    if len(data) != SYNC_SIZE:
        raise ValueError(f"a sync message is {SYNC_SIZE} bytes, not {len(data)}")
    length: int = _SYNC.unpack(data)[0]
    return length


def sync_error_text(data: bytes) -> str:
    """The error text of a sync message (undecodable bytes replaced)."""
    return data.decode("utf-8", "replace")


def _check_id(vm_id: str) -> str:
    if _uuid(vm_id) is None:
        raise ValueError(f"VM id {vm_id!r} is not a lower-case uuid")
    return vm_id


def migrate_vm_path(vm_id: str, base: str = XENOPS_PATH) -> str:
    """The path of the vm connection's ``PUT`` for VM ``vm_id`` (a uuid) under ``base``."""
    return f"{base.rstrip('/')}/migrate/vm/{_check_id(vm_id)}"


def migrate_mem_path(vm_id: str, base: str = XENOPS_PATH) -> str:
    """The path of the mem connection's ``PUT`` for VM ``vm_id`` (a uuid) under ``base``."""
    return f"{base.rstrip('/')}/migrate/mem/{_check_id(vm_id)}"


def parse_migrate_path(path: str) -> tuple[Literal["vm", "mem"], str] | None:
    """("vm" or "mem", VM id) for a path of :data:`XENOPS_PATH`; None for any other path."""
    prefix = XENOPS_PATH + "/migrate/"
    if not path.startswith(prefix):
        return None
    kind, _, vm_id = path[len(prefix) :].partition("/")
    if _uuid(vm_id) is None:
        return None
    if kind == "vm":
        return "vm", vm_id
    if kind == "mem":
        return "mem", vm_id
    return None


def _uuid(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        return text if str(uuidlib.UUID(text)) == text else None
    except ValueError:
        return None


class MetadataError(ValueError):
    """VM metadata that is not valid JSON of the expected shape."""


class Vbd(NamedTuple):
    """A disk of the VM: its device name, the VDI's uuid and the SR's uuid."""

    device: str
    vdi: str
    sr: str


@dataclass(frozen=True)
class VmMetadata:
    """What the destination needs to recreate the VM: identity, size, workload and disks."""

    uuid: str
    name_label: str
    memory: int
    """Bytes; a positive multiple of 4096."""
    vcpus: int
    workload: str
    vbds: tuple[Vbd, ...] = ()

    def __post_init__(self) -> None:
        if _uuid(self.uuid) is None:
            raise MetadataError(f"uuid {self.uuid!r} is not a lower-case uuid")
        if not isinstance(self.name_label, str) or len(self.name_label) > NAME_MAX:
            raise MetadataError(f"name_label must be a string of at most {NAME_MAX} characters")
        if not _is_int(self.memory) or self.memory <= 0 or self.memory % PAGE_SIZE:
            raise MetadataError(f"memory {self.memory!r} is not a positive multiple of 4096")
        if not _is_int(self.vcpus) or not 1 <= self.vcpus <= VCPUS_MAX:
            raise MetadataError(f"vcpus {self.vcpus!r} is outside 1..{VCPUS_MAX}")
        if not isinstance(self.workload, str):
            raise MetadataError(f"workload {self.workload!r} is not a string")
        devices = set()
        for vbd in self.vbds:
            if not isinstance(vbd, Vbd):
                raise MetadataError(f"vbd {vbd!r} is not a Vbd")
            if not isinstance(vbd.device, str) or not _DEVICE.fullmatch(vbd.device):
                raise MetadataError(f"vbd device {vbd.device!r} is not a device name")
            if vbd.device in devices:
                raise MetadataError(f"vbd device {vbd.device!r} appears twice")
            devices.add(vbd.device)
            for field in ("vdi", "sr"):
                if _uuid(getattr(vbd, field)) is None:
                    raise MetadataError(
                        f"vbd {vbd.device}: {field} {getattr(vbd, field)!r} is not a uuid"
                    )

    @property
    def memory_pages(self) -> int:
        """The guest's memory in 4 KiB pages."""
        return self.memory // PAGE_SIZE

    def to_json(self) -> bytes:
        """The metadata as a UTF-8 JSON object."""
        document = {
            "uuid": self.uuid,
            "name_label": self.name_label,
            "memory": self.memory,
            "vcpus": self.vcpus,
            "workload": self.workload,
            "vbds": [vbd._asdict() for vbd in self.vbds],
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> VmMetadata:
        """Parse and validate a document of :meth:`to_json` (unknown keys are ignored)."""
        if len(data) > METADATA_MAX:
            raise MetadataError(f"metadata of {len(data)} bytes exceeds {METADATA_MAX}")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise MetadataError(f"metadata is not JSON: {e}") from None
        if not isinstance(document, dict):
            raise MetadataError("metadata is not a JSON object")
        fields = ("uuid", "name_label", "memory", "vcpus", "workload", "vbds")
        missing = [name for name in fields if name not in document]
        if missing:
            raise MetadataError(f"metadata lacks {', '.join(missing)}")
        vbds = document["vbds"]
        if not isinstance(vbds, list):
            raise MetadataError("vbds is not a list")
        return cls(
            uuid=document["uuid"],
            name_label=document["name_label"],
            memory=document["memory"],
            vcpus=document["vcpus"],
            workload=document["workload"],
            vbds=tuple(_vbd(item) for item in vbds),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _vbd(item: Any) -> Vbd:
    if not isinstance(item, dict) or not {"device", "vdi", "sr"} <= set(item):
        raise MetadataError(f"vbd {item!r} is not an object with device, vdi and sr")
    return Vbd(item["device"], item["vdi"], item["sr"])
