"""migrate.formats.xenops: sync messages, migration paths, cookie names, VM metadata JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from migrate.formats import xenops
from migrate.formats.xenops import (
    MetadataError,
    Vbd,
    VmMetadata,
    migrate_mem_path,
    migrate_vm_path,
    parse_migrate_path,
    parse_sync,
    sync_error,
    sync_error_text,
    sync_ok,
)

VM = "0b1f5e4c-3f6a-4d8e-9c2b-7a1d2e3f4a5b"
VDI = "11111111-2222-4333-8444-555555555555"
SR = "66666666-7777-4888-9999-aaaaaaaaaaaa"


def test_sync_ok() -> None:
    assert sync_ok() == b"\x00\x00"
    assert parse_sync(sync_ok()) == 0


def test_sync_error_round_trip() -> None:
    message = sync_error("VM_BAD_POWER_STATE: déjà")
    length = parse_sync(message[:2])
    assert length == len("VM_BAD_POWER_STATE: déjà".encode()) == len(message) - 2
    assert sync_error_text(message[2:]) == "VM_BAD_POWER_STATE: déjà"


def test_sync_error_is_never_success() -> None:
    assert sync_error("") == b"\x00\x05error"


def test_sync_error_cut_to_65535_bytes_on_a_character() -> None:
    long = "é" * 40000  # 80000 bytes of UTF-8
    message = sync_error(long)
    length = parse_sync(message[:2])
    assert length == 65534  # 65535 would split the last "é"
    assert sync_error_text(message[2:]) == "é" * 32767
    assert parse_sync(sync_error("a" * 70000)[:2]) == 65535


def test_sync_parse_refuses_other_sizes() -> None:
    with pytest.raises(ValueError, match="2 bytes, not 3"):
        parse_sync(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="not 1"):
        parse_sync(b"\x00")
    assert sync_error_text(b"\xff ok") == "\ufffd ok"


def test_paths() -> None:
    assert xenops.XENOPS_PATH == "/services/xenops"
    assert migrate_vm_path(VM) == f"/services/xenops/migrate/vm/{VM}"
    assert migrate_mem_path(VM, "/services/xenops/") == f"/services/xenops/migrate/mem/{VM}"
    assert parse_migrate_path(migrate_vm_path(VM)) == ("vm", VM)
    assert parse_migrate_path(migrate_mem_path(VM)) == ("mem", VM)
    for path in (
        f"/services/xenops/migrate/disk/{VM}",
        "/services/xenops/migrate/vm/not-a-uuid",
        f"/services/xenops/migrate/vm/{VM.upper()}",
        f"/services/xenops/migrate/vm/{VM}/x",
        f"/services/SM/migrate/vm/{VM}",
        "/services/xenops",
    ):
        assert parse_migrate_path(path) is None, path
    with pytest.raises(ValueError, match="not a lower-case uuid"):
        migrate_vm_path("../etc")


def test_cookie_names() -> None:
    assert (
        xenops.COOKIE_SESSION_ID,
        xenops.COOKIE_FINAL_ID,
        xenops.COOKIE_DBG,
        xenops.COOKIE_MEMORY_LIMIT,
    ) == ("session_id", "final_id", "dbg", "memory_limit")


METADATA = VmMetadata(
    uuid=VM,
    name_label="ledger vm ✓",
    memory=256 << 20,
    vcpus=2,
    workload="hotset:20M:64M+ledger",
    vbds=(Vbd("xvda", VDI, SR), Vbd("xvdb", SR, VDI)),
)


def test_metadata_round_trip() -> None:
    data = METADATA.to_json()
    assert VmMetadata.from_json(data) == METADATA
    assert VmMetadata.from_json(data.decode()) == METADATA
    assert METADATA.memory_pages == 65536
    document = json.loads(data)
    assert document["vbds"][0] == {"device": "xvda", "vdi": VDI, "sr": SR}
    no_disks = VmMetadata(VM, "", 4096, 1, "idle")
    assert VmMetadata.from_json(no_disks.to_json()) == no_disks


def test_metadata_ignores_unknown_keys() -> None:
    document = json.loads(METADATA.to_json())
    document["future"] = {"anything": 1}
    document["vbds"][0]["mode"] = "RW"
    assert VmMetadata.from_json(json.dumps(document)) == METADATA


def changed(**fields: Any) -> str:
    document = json.loads(METADATA.to_json())
    for key, value in fields.items():
        if value is KeyError:
            del document[key]
        else:
            document[key] = value
    return json.dumps(document)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "not JSON"),
        (b"\xff", "not JSON"),
        ("[]", "not a JSON object"),
        ("[" * 50000 + "]" * 50000, "not JSON"),  # too deep for json: refused, no traceback
        (" " * (xenops.METADATA_MAX + 1), "exceeds"),
        (changed(uuid=KeyError, vbds=KeyError), "lacks uuid, vbds"),
        (changed(uuid="nope"), "uuid 'nope'"),
        (changed(uuid=VM.upper()), "lower-case uuid"),
        (changed(name_label=5), "name_label"),
        (changed(name_label="x" * 1025), "name_label"),
        (changed(memory=0), "memory 0"),
        (changed(memory=4097), "memory 4097"),
        (changed(memory="4096"), "memory '4096'"),
        (changed(memory=True), "memory True"),
        (changed(memory=4096.0), "memory 4096.0"),
        (changed(vcpus=0), "vcpus 0"),
        (changed(vcpus=1025), "vcpus 1025"),
        (changed(workload=None), "workload None"),
        (changed(vbds={}), "vbds is not a list"),
        (changed(vbds=[["xvda", VDI, SR]]), "not an object with device, vdi and sr"),
        (changed(vbds=[{"device": "xvda", "vdi": VDI}]), "not an object"),
        (changed(vbds=[{"device": "../x", "vdi": VDI, "sr": SR}]), "not a device name"),
        (changed(vbds=[{"device": 1, "vdi": VDI, "sr": SR}]), "not a device name"),
        (changed(vbds=[{"device": "xvda", "vdi": "v", "sr": SR}]), "vbd xvda: vdi 'v'"),
        (changed(vbds=[{"device": "xvda", "vdi": VDI, "sr": None}]), "vbd xvda: sr None"),
        (
            changed(vbds=[{"device": "xvda", "vdi": VDI, "sr": SR}] * 2),
            "device 'xvda' appears twice",
        ),
    ],
)
def test_metadata_refusals(data: str | bytes, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        VmMetadata.from_json(data)
