"""``xfer migrate`` between two real ``xfer serve`` processes on ``[::1]``: the VM moves while
it runs, the report comes as a table or as JSON, the progress is drawn on a terminal, Ctrl-C
cancels, and every failure is one line with the VM left running on the source."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrate.cli.migration_report import COLUMNS, parse_report
from migrate.cli.saved_image import read_saved_vm
from migrate.guest.workloads import check_ledger, read_ledger
from support import (
    PASSWORD,
    ROOT,
    UUID,
    XFER,
    Daemon,
    MiB,
    network_namespace,
    one_error_line,
    running_daemon,
    wait_until_sync,
    with_tty_stderr,
    xfer_env,
    xfer_ok,
    xfer_run,
)
from test_serve import serving

pytestmark = pytest.mark.slow  # two daemons, guests and migrations

LOOPBACK = "lo"
"""The network the migrations go over (by its bridge): the destination's address on it is
``::1``, where the management network's could be any of the machine's."""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The host VMs start on."""
    with running_daemon(tmp_path_factory.mktemp("source")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The host VMs move to."""
    with running_daemon(tmp_path_factory.mktemp("destination")) as daemon:
        yield daemon


def host(daemon: Daemon) -> str:
    """``[::1]:PORT`` of a daemon."""
    return f"[::1]:{daemon.port}"


def listed(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """``xfer vm list --json`` by uuid."""
    rows = json.loads(xfer_ok("vm", "list", *daemon.auth(), "--json"))
    return {row["uuid"]: row for row in rows}


def host_uuid(daemon: Daemon) -> str:
    (ref,) = daemon.rpc("host.get_all")
    uuid: str = daemon.rpc("host.get_uuid", ref)
    return uuid


def running_vm(daemon: Daemon, memory: str = "32M", workload: str = "ledger") -> str:
    """A new VM started on ``daemon``; its uuid."""
    out = xfer_ok("vm", "create", *daemon.auth(), "--memory", memory, "--workload", workload)
    uuid = out.strip()
    assert UUID.fullmatch(uuid), out
    xfer_ok("vm", "start", *daemon.auth(), "--vm", uuid)
    return uuid


def migrate(source: Daemon, destination: Daemon, uuid: str, *args: str) -> Any:
    """``xfer migrate`` of ``uuid`` from ``source`` to ``destination`` over :data:`LOOPBACK`
    (unless ``args`` name a network); the process."""
    network = () if "--network" in args else ("--network", LOOPBACK)
    return xfer_run(
        "migrate", *source.auth(), "--vm", uuid, "--to", host(destination), *network, *args
    )


def runs_on(daemon: Daemon, uuid: str) -> bool:
    """Whether ``daemon`` has the VM ``uuid`` running on it."""
    row = listed(daemon).get(uuid)
    return (
        row is not None
        and row["power_state"] == "Running"
        and row["resident_on"] == (host_uuid(daemon))
    )


def cleanup(daemon: Daemon, uuid: str) -> None:
    xfer_ok("vm", "destroy", *daemon.auth(), "--vm", uuid, "--force")


def test_live_migration_with_the_report_as_json(
    source: Daemon, destination: Daemon, tmp_path: Path
) -> None:
    uuid = running_vm(source, "64M", "hotset:8M:16M+ledger")
    proc = migrate(source, destination, uuid, "--verify", "--json", "--max-downtime", "50")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    value = json.loads(proc.stdout)
    report = parse_report(value)
    assert report.vm == uuid and report.memory == 64 * MiB and report.state == "done"
    assert report.rounds and report.rounds[0].index == 0
    assert report.sent >= 4096  # at least the ledger's pages went
    assert report.memory_identical is True, value["memory_digest"]
    assert report.downtime is not None and report.total is not None
    assert 0 < report.downtime <= report.total
    assert runs_on(destination, uuid)
    assert uuid not in listed(source)

    # the ledger went on, without a gap in its sequence, on the destination
    image = tmp_path / "vm.img"
    xfer_ok("vm", "save", *destination.auth(), "--vm", uuid, "-o", str(image))
    verdict = check_ledger(read_ledger(read_saved_vm(str(image)).memory))
    assert verdict.intact, verdict
    xfer_ok("vm", "destroy", *destination.auth(), "--vm", uuid)


def test_the_report_as_a_table_and_back_over_a_named_network(
    source: Daemon, destination: Daemon
) -> None:
    uuid = running_vm(source)
    out = migrate(source, destination, uuid, "--verify")
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[0].split() == " ".join(COLUMNS).split()
    assert any(line.startswith("downtime:") for line in lines), lines
    assert any(line.startswith("total time:") for line in lines), lines
    assert any(line.startswith("throughput:") for line in lines), lines
    assert "memory check:  identical at the pause (sha256 " in out.stdout.decode()
    assert lines[-1] == "state:         done"
    assert runs_on(destination, uuid)

    # back, over the loopback network named by its uuid
    networks = source.rpc("network.get_all_records").values()
    (name,) = [network["uuid"] for network in networks if network["bridge"] == LOOPBACK]
    back = migrate(destination, source, uuid, "--network", name, "--json")
    assert back.returncode == 0, back.stderr.decode()
    assert runs_on(source, uuid) and uuid not in listed(destination)
    cleanup(source, uuid)


def test_progress_on_a_terminal(source: Daemon, destination: Daemon) -> None:
    uuid = running_vm(source, "64M", "uniform:8M")
    args = ("migrate", *source.auth(), "--vm", uuid, "--to", host(destination))
    status, stdout, tty = with_tty_stderr(*args, "--network", LOOPBACK)
    assert status == 0, tty
    assert f"migrating {uuid[:8]}".encode() in tty and b"100%" in tty, tty
    assert re.search(rb"\d\d:\d\d, round \d+: [0-9.]+ [KMG]iB sent, guest writes ", tty), tty
    assert stdout.decode().startswith("ROUND"), stdout
    # and none with --quiet
    back = with_tty_stderr(
        "migrate",
        *destination.auth(),
        "--vm",
        uuid,
        "--to",
        host(source),
        "--network",
        LOOPBACK,
        "-q",
    )
    assert back[0] == 0 and back[2] == b"", back
    cleanup(source, uuid)


def test_non_live_migration(source: Daemon, destination: Daemon) -> None:
    uuid = running_vm(source)
    proc = migrate(source, destination, uuid, "--no-live", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert parse_report(json.loads(proc.stdout)).state == "done"
    assert runs_on(destination, uuid)
    cleanup(destination, uuid)


def test_ctrl_c_cancels_and_the_vm_stays_or_has_moved(source: Daemon, destination: Daemon) -> None:
    """SIGINT while the migration runs: the task is cancelled and the VM runs on the source,
    or (the migration was already over) it runs on the destination; never neither."""
    uuid = running_vm(source, "512M", "uniform:2G")
    args = ("--vm", uuid, "--to", host(destination), "--network", LOOPBACK, "-q")
    proc = subprocess.Popen(
        [*XFER, "migrate", *source.auth(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=xfer_env(),
    )
    try:
        wait_until_sync(
            lambda: any(
                t["status"] == "pending" for t in source.rpc("task.get_all_records").values()
            ),
            what="the migration's task",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    text = err.decode()
    assert text.startswith("xfer: the migration was cancelled ("), text
    where = source if "stays on the source" in text else destination
    assert runs_on(where, uuid), (text, listed(source), listed(destination))
    cleanup(where, uuid)


def test_the_management_network_by_default(tmp_path: Path) -> None:
    """Without --network, the destination's management network: two hosts in a network
    namespace of their own, whose only interface (and so the management one) is loopback."""
    with network_namespace("xfer-migrate") as namespace:

        def xfer(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["ip", "netns", "exec", namespace, *XFER, *args],
                capture_output=True,
                cwd=ROOT,
                env=xfer_env(XFER_PASSWORD=PASSWORD),
                timeout=120,
                check=False,
            )

        hosts = []
        with contextlib.ExitStack() as stack:
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                args = ("--listen", "[::1]:0", "--password", PASSWORD)
                _, (url,), _ = stack.enter_context(serving(tmp_path / name, *args, netns=namespace))
                hosts.append(url)
            a, b = hosts
            uuid = xfer("vm", "create", "--host", a, "--memory", "16M").stdout.decode().strip()
            assert UUID.fullmatch(uuid), uuid
            assert xfer("vm", "start", "--host", a, "--vm", uuid).returncode == 0
            proc = xfer("migrate", "--host", a, "--vm", uuid, "--to", b, "--json")
            assert proc.returncode == 0, proc.stderr.decode()
            assert parse_report(json.loads(proc.stdout)).state == "done"
            rows = json.loads(xfer("vm", "list", "--host", b, "--json").stdout)
            assert [(row["uuid"], row["power_state"]) for row in rows] == [(uuid, "Running")]


# Failures


def test_failures_are_one_line_and_leave_the_vm_running(
    source: Daemon, destination: Daemon
) -> None:
    uuid = running_vm(source)
    error = one_error_line(migrate(source, destination, uuid, "--network", "no-such-net"))
    assert error.startswith("the destination has no network 'no-such-net' (it has: "), error
    assert f" {LOOPBACK}," in error or f" {LOOPBACK})" in error, error
    error = one_error_line(
        migrate(source, destination, uuid, "--to-password", "wrong", "--network", "x")
    )
    assert error.startswith("SESSION_AUTHENTICATION_FAILED"), error
    proc = xfer_run("migrate", *source.auth(), "--vm", uuid, "--to", "[::1]:9")
    assert one_error_line(proc).startswith("cannot reach http://[::1]:9/jsonrpc"), proc.stderr
    error = one_error_line(migrate(source, source, uuid))
    assert error, error  # a VM is not migrated onto its own host
    assert runs_on(source, uuid)

    xfer_ok("vm", "shutdown", *source.auth(), "--vm", uuid, "--force")
    error = one_error_line(migrate(source, destination, uuid))
    assert error.startswith("VM_BAD_POWER_STATE"), error
    error = one_error_line(migrate(source, destination, "00000000-0000-0000-0000-000000000000"))
    assert error.startswith("UUID_INVALID"), error
    cleanup(source, uuid)
    assert not [t for t in source.rpc("task.get_all_records").values() if "migrate" in str(t)]


@pytest.mark.parametrize(
    "args",
    [
        ("--max-downtime", "0"),
        ("--max-downtime", "fast"),
        ("--max-rounds", "-1"),
        ("--vm",),
    ],
)
def test_usage_errors(args: tuple[str, ...]) -> None:
    proc = xfer_run(
        "migrate", "--host", "[::1]:9", "--password", PASSWORD, "--vm", "v", "--to", "x", *args
    )
    assert proc.returncode == 2 and b"usage:" in proc.stderr, proc.stderr


def test_no_password_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "XFER_PASSWORD"}
    proc = subprocess.run(
        [*XFER, "migrate", "--host", "[::1]:9", "--vm", "v", "--to", "[::1]:9"],
        capture_output=True,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=60,
    )
    assert one_error_line(proc) == "no password: give --password or set XFER_PASSWORD"
