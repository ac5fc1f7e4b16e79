"""Migration driven by the official XenAPI SDK (Async.VM.migrate_send, task progress,
task.cancel), and to a destination that speaks HTTPS only (TLS on both connections)."""

from __future__ import annotations

import json
import re
import ssl
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from support import PASSWORD, CuttingProxy, Daemon, running_daemon, wait_until_sync
from test_migration import dest_map, start_vm
from test_migration_cuts import through
from test_serve import serving, stop
from test_tls import make_certificate


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    with (
        running_daemon(tmp_path_factory.mktemp("source")) as source,
        running_daemon(tmp_path_factory.mktemp("destination")) as destination,
    ):
        yield source, destination


def sdk(daemon: Daemon) -> Any:
    session = XenAPI.Session(f"http://[::1]:{daemon.port}")
    session.xenapi.login_with_password("root", PASSWORD, "1.0", "test_migration_sdk")
    return session


def test_async_migrate_send_with_the_sdk(hosts: tuple[Daemon, Daemon]) -> None:
    source, destination = hosts
    vm = start_vm(source, "uniform:8M+ledger")
    dest = dest_map(destination)
    session = sdk(source)
    try:
        x = session.xenapi
        x.VM.assert_can_migrate(vm, dest, True, {}, {}, {})
        task = x.Async.VM.migrate_send(vm, dest, True, {}, {}, {"max_downtime": "50"})
        seen: list[float] = []

        def ended() -> bool:
            seen.append(float(x.task.get_progress(task)))
            return x.task.get_status(task) not in ("pending", "cancelling")

        wait_until_sync(ended, timeout=60, what="the migration task")
        assert x.task.get_status(task) == "success", x.task.get_error_info(task)
        assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 <= p <= 1 for p in seen)
        result = x.task.get_result(task)
        assert vm in result  # the VM's ref on the destination, as an XML-RPC value
        report = json.loads(x.task.get_other_config(task)["xfer_migration"])
        assert report["state"] == "done" and report["vm"] == vm.removeprefix("OpaqueRef:")
        assert destination.rpc("VM.get_power_state", vm) == "Running"
        assert vm not in x.VM.get_all()
        destination.rpc("VM.hard_shutdown", vm)
        destination.rpc("VM.destroy", vm)
    finally:
        session.xenapi.session.logout()


def test_task_cancel_leaves_the_vm_running_here(hosts: tuple[Daemon, Daemon]) -> None:
    source, destination = hosts
    vm = start_vm(source, "uniform:8M")
    session = sdk(source)
    try:
        x = session.xenapi
        # the memory stream held up in a relay, so that the migration is under way
        with CuttingProxy(destination.port, hold=64 << 10, only=1) as relay:
            task = x.Async.VM.migrate_send(
                vm, through(dest_map(destination), relay), True, {}, {}, {}
            )
            assert relay.holding.wait(30)
            x.task.cancel(task)
            wait_until_sync(
                lambda: x.task.get_status(task) not in ("pending", "cancelling"),
                what="the cancelled task to end",
            )
            relay.release.set()
        assert x.task.get_status(task) == "cancelled"
        assert x.VM.get_power_state(vm) == "Running"
        wait_until_sync(
            lambda: vm not in destination.rpc("VM.get_all"), what="nothing on the destination"
        )
        report = json.loads(x.task.get_other_config(task)["xfer_migration"])
        assert report["state"] == "failed"
        # and it still migrates
        task = x.Async.VM.migrate_send(vm, dest_map(destination), True, {}, {}, {})
        wait_until_sync(lambda: x.task.get_status(task) != "pending", what="the second migration")
        assert x.task.get_status(task) == "success", x.task.get_error_info(task)
        destination.rpc("VM.hard_shutdown", vm)
        destination.rpc("VM.destroy", vm)
    finally:
        session.xenapi.session.logout()


def test_https_destination(hosts: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    source, _ = hosts
    cert, key = make_certificate(tmp_path)
    args = ("--listen", "[::]:0", "--password", PASSWORD, "--tls-cert", str(cert))
    with serving(tmp_path, *args, "--tls-key", str(key)) as (proc, urls, _):
        match = re.fullmatch(r"https://\[::\]:(\d+)/", urls[0])
        assert match, urls
        context = ssl.create_default_context(cafile=str(cert))
        rpc = xmlrpc.client.ServerProxy(f"https://[::1]:{match.group(1)}/", context=context)

        def call(method: str, *params: Any) -> Any:
            answer = getattr(rpc, method)(*params)
            assert answer["Status"] == "Success", answer
            return answer["Value"]

        login = call("session.login_with_password", "root", PASSWORD, "1.0", "t")
        host = call("host.get_all", login)[0]
        lo = next(p for p in call("PIF.get_all", login) if call("PIF.get_device", login, p) == "lo")
        dest = call("host.migrate_receive", login, host, call("PIF.get_network", login, lo), {})
        assert dest["xenops"].startswith("https://[::1]:")
        vm = start_vm(source, "ledger")
        task = source.rpc("Async.VM.migrate_send", vm, dest, True, {}, {}, {"verify": "true"})
        wait_until_sync(
            lambda: source.rpc("task.get_status", task) != "pending", what="the migration"
        )
        record = source.rpc("task.get_record", task)
        assert record["status"] == "success", record["error_info"]
        digests = json.loads(record["other_config"]["xfer_migration"])["memory_digest"]
        assert digests["source"] == digests["destination"]
        assert call("VM.get_power_state", login, vm) == "Running"
        call("VM.hard_shutdown", login, vm)
        rpc("close")()
        assert stop(proc) == 0
