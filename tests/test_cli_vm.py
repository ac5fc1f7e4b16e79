"""``xfer vm create|list|start|shutdown|destroy|save|restore`` against a real ``xfer serve``:
guest processes made, run, stopped and forgotten through the command line, their suspend
images saved to a file and restored from it, every failure one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from migrate.cli.saved_image import read_saved_vm
from migrate.formats.suspend import SIGNATURE, end_of_image
from support import (
    UUID,
    CuttingProxy,
    Daemon,
    KiB,
    MiB,
    one_error_line,
    xfer_ok,
    xfer_run,
)

pytestmark = pytest.mark.slow  # each test a few xfer processes and guests


def create(daemon: Daemon, *args: str) -> str:
    """``xfer vm create`` on ``daemon`` with ``args``; the new VM's uuid."""
    out = xfer_ok("vm", "create", *daemon.auth(), *args)
    assert UUID.fullmatch(out.strip()), out
    return out.strip()


def listed(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """``xfer vm list --json`` by uuid."""
    rows = json.loads(xfer_ok("vm", "list", *daemon.auth(), "--json"))
    return {row["uuid"]: row for row in rows}


def vm(daemon: Daemon, command: str, uuid: str, *args: str) -> str:
    """``xfer vm COMMAND --vm UUID ARGS``, checked to succeed; its stdout."""
    return xfer_ok("vm", command, *daemon.auth(), "--vm", uuid, *args)


def this_host(daemon: Daemon) -> str:
    """The uuid of the daemon's host."""
    (host,) = daemon.rpc("host.get_all")
    uuid: str = daemon.rpc("host.get_uuid", host)
    return uuid


def test_a_vm_through_its_life(daemon: Daemon) -> None:
    uuid = create(daemon, "--memory", "16M", "--name", "life", "--workload", "uniform:1M")
    row = listed(daemon)[uuid]
    assert row == {
        "uuid": uuid,
        "name_label": "life",
        "power_state": "Halted",
        "memory": 16 * MiB,
        "VCPUs": 1,
        "workload": "uniform:1M",
        "resident_on": "",
    }
    vm(daemon, "start", uuid)
    row = listed(daemon)[uuid]
    assert row["power_state"] == "Running" and row["resident_on"] == this_host(daemon)
    table = xfer_ok("vm", "list", *daemon.auth())
    header, *lines = table.splitlines()
    assert header.split() == ["UUID", "NAME", "STATE", "MEMORY", "VCPUS", "WORKLOAD", "HOST"]
    line = next(line for line in lines if line.startswith(uuid))
    assert line.split() == [
        uuid,
        "life",
        "Running",
        "16.0",
        "MiB",
        "1",
        "uniform:1M",
        row["resident_on"],
    ]

    # a running VM is not destroyed without --force: xapi's error, on one line
    error = one_error_line(xfer_run("vm", "destroy", *daemon.auth(), "--vm", uuid))
    assert error.startswith("VM_BAD_POWER_STATE: "), error
    assert error.endswith(" halted running"), error

    vm(daemon, "shutdown", uuid)
    assert listed(daemon)[uuid]["power_state"] == "Halted"
    vm(daemon, "start", uuid, "--paused")
    assert listed(daemon)[uuid]["power_state"] == "Paused"
    vm(daemon, "shutdown", uuid, "--force")
    assert listed(daemon)[uuid]["power_state"] == "Halted"
    vm(daemon, "destroy", uuid)
    assert uuid not in listed(daemon)


def test_create_with_a_disk_and_destroy_it_with_the_vm(daemon: Daemon) -> None:
    before = set(daemon.vdis())
    uuid = create(daemon, "--memory", "8M", "--name", "disky", "--disk", "4M", "--sr", daemon.sr)
    (vdi,) = set(daemon.vdis()) - before
    record = daemon.vdis()[vdi]
    assert int(record["virtual_size"]) == 4 * MiB and record["name_label"] == "disky disk"
    ref = daemon.rpc("VM.get_by_uuid", uuid)
    (vbd,) = daemon.rpc("VM.get_VBDs", ref)
    assert daemon.rpc("VDI.get_uuid", daemon.rpc("VBD.get_VDI", vbd)) == vdi
    vm(daemon, "start", uuid)
    vm(daemon, "destroy", uuid, "--force", "--disks")
    assert uuid not in listed(daemon)
    assert vdi not in daemon.vdis()


def test_create_without_an_sr_uses_the_default_one(daemon: Daemon) -> None:
    before = set(daemon.vdis())
    uuid = create(daemon, "--memory", "8M", "--disk", "1M")
    (vdi,) = set(daemon.vdis()) - before
    assert daemon.vdis()[vdi]["SR"] == daemon.rpc("SR.get_by_uuid", daemon.sr)
    vm(daemon, "destroy", uuid, "--disks")
    assert vdi not in daemon.vdis()


def test_a_bad_workload_is_named(daemon: Daemon) -> None:
    before = set(listed(daemon))
    args = ("--memory", "8M", "--workload", "hotset:1M:64K+spin:7")
    error = one_error_line(xfer_run("vm", "create", *daemon.auth(), *args))
    assert error.startswith("INVALID_VALUE: ") and "'spin:7'" in error, error
    assert set(listed(daemon)) == before


def test_a_failed_disk_leaves_no_vm_behind(daemon: Daemon) -> None:
    before = set(listed(daemon))
    proc = xfer_run(
        "vm", "create", *daemon.auth(), "--memory", "8M", "--disk", "1M", "--sr", "no-such-sr"
    )
    assert one_error_line(proc).startswith("UUID_INVALID")
    assert set(listed(daemon)) == before


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("create", "--memory", "1000"), "1000"),
        (("create", "--memory", "8M", "--sr", "x"), "--sr needs --disk"),
        (("start", "--vm", "00000000-0000-0000-0000-000000000000"), "UUID_INVALID"),
        (("shutdown", "--vm", "nope"), "UUID_INVALID"),
        (("save", "--vm", "00000000-0000-0000-0000-000000000000", "-o", "/dev/null"), "404"),
    ],
)
def test_bad_requests_are_one_line(daemon: Daemon, args: tuple[str, ...], words: str) -> None:
    command, *rest = args
    error = one_error_line(xfer_run("vm", command, *daemon.auth(), *rest))
    assert words in error, error


@pytest.mark.parametrize(
    "args",
    [
        ("create", "--memory", "lots"),
        ("create", "--memory", "8M", "--vcpus", "0"),
        ("create",),
        ("start",),
        ("save", "--vm", "x"),
    ],
)
def test_usage_errors(args: tuple[str, ...]) -> None:
    proc = xfer_run("vm", *args, "--host", "[::1]:9", "--password", "x")
    assert proc.returncode == 2 and b"usage:" in proc.stderr, proc.stderr


def test_wrong_password_is_one_line(daemon: Daemon) -> None:
    error = one_error_line(xfer_run("vm", "list", *daemon.auth(password="wrong")))
    assert error.startswith("SESSION_AUTHENTICATION_FAILED"), error


# Suspend images


def test_save_and_restore_through_a_file(daemon: Daemon, tmp_path: Path) -> None:
    uuid = create(daemon, "--memory", "32M", "--name", "saved", "--workload", "uniform:4M")
    vm(daemon, "start", uuid)
    image = tmp_path / "vm.img"
    out = vm(daemon, "save", uuid, "-o", str(image))
    assert out.split() == ["sha256", out.split()[1], str(image)]
    assert not Path(f"{image}.part").exists()
    data = image.read_bytes()
    assert data.startswith(SIGNATURE) and data.endswith(end_of_image())
    saved = read_saved_vm(str(image))
    assert saved.metadata.uuid == uuid and saved.metadata.memory == 32 * MiB
    assert saved.metadata.workload == "uniform:4M" and saved.metadata.name_label == "saved"
    assert any(saved.memory[i * MiB : (i + 1) * MiB] != bytes(MiB) for i in range(32))
    assert listed(daemon)[uuid]["power_state"] in ("Halted", "Suspended")

    restored = xfer_ok("vm", "restore", *daemon.auth(), str(image)).strip()
    assert UUID.fullmatch(restored), restored
    row = listed(daemon)[restored]
    assert row["power_state"] == "Running" and row["memory"] == 32 * MiB
    vm(daemon, "destroy", restored, "--force")
    if restored != uuid:
        vm(daemon, "destroy", uuid, "--force")


def test_save_to_stdout_and_restore_from_stdin(daemon: Daemon) -> None:
    uuid = create(daemon, "--memory", "8M", "--workload", "ledger")
    vm(daemon, "start", uuid)
    proc = xfer_run("vm", "save", *daemon.auth(), "--vm", uuid, "-o", "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(SIGNATURE) and proc.stdout.endswith(end_of_image())
    digest = hashlib.sha256(proc.stdout).hexdigest()
    assert proc.stderr.decode() == f"sha256 {digest}  -\n"
    assert listed(daemon)[uuid]["power_state"] == "Halted"
    # a pipe goes chunked
    assert xfer_ok("vm", "restore", *daemon.auth(), "-", input=proc.stdout).strip() == uuid
    assert listed(daemon)[uuid]["power_state"] == "Running"
    vm(daemon, "destroy", uuid, "--force")


@pytest.mark.parametrize(
    ("cut", "words"),
    [(100, "disconnected without sending a response"), (16 * KiB, "the image is not whole")],
)
def test_a_cut_save_leaves_no_file(daemon: Daemon, tmp_path: Path, cut: int, words: str) -> None:
    """The answer cut inside its head, or inside the page data (an image of 16 MiB of memory
    has 32 KiB of page entries at least)."""
    uuid = create(daemon, "--memory", "16M", "--workload", "uniform:1M")
    vm(daemon, "start", uuid)
    image = tmp_path / "vm.img"
    with CuttingProxy(daemon.port, cut=cut) as proxy:
        proc = xfer_run("vm", "save", *proxy.auth(), "--vm", uuid, "-o", str(image))
    error = one_error_line(proc)
    assert words in error, error
    assert not image.exists() and not Path(f"{image}.part").exists()
    vm(daemon, "destroy", uuid, "--force")


def test_restore_refuses_what_is_no_image(daemon: Daemon, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not a suspend image at all" * 100)
    before = set(listed(daemon))
    error = one_error_line(xfer_run("vm", "restore", *daemon.auth(), str(junk)))
    assert "signature" in error, error
    assert set(listed(daemon)) == before
    error = one_error_line(xfer_run("vm", "restore", *daemon.auth(), str(tmp_path / "none")))
    assert "No such file" in error, error
