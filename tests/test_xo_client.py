"""Xen Orchestra's own client library (npm ``xen-api``) against the XenAPI served on ``::1``:
connecting over ``http://[::1]:PORT``, the pool, listing records, and its event watching
seeing a VDI created and destroyed after it connected; and moving a disk in and out through
the VDI endpoints the way Xen Orchestra does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from migrate.guest.processes import ProcessHypervisor
from migrate.host.services import HostServices
from migrate.http.limits import Limits
from migrate.http.routing import Router
from migrate.http.server import serve, serve_tls
from migrate.http.tls import server_ssl_context
from migrate.rpc.dispatch import Dispatcher, register_rpc
from migrate.rpc.pool import pool_uuid
from migrate.state.store import Store
from migrate.transfer import export_raw_vdi, import_raw_vdi
from support import MiB, host_store, make_dynamic
from test_tls import make_certificate

XEN_API_VERSION = "4.7.6"
"""The npm ``xen-api`` version tested (pinned in tests/xo/package.json too)."""
XO_DIR = Path(__file__).parent / "xo"
HOST = "5e0e0b5c-8a8f-4d1b-9c53-1f4a6f6f0002"
INSTALL_TIMEOUT = 300
CLIENT_TIMEOUT = 60

# the first test installs xen-api from the npm registry (INSTALL_TIMEOUT) before its run
pytestmark = [pytest.mark.slow, pytest.mark.timeout(INSTALL_TIMEOUT + 2 * CLIENT_TIMEOUT)]


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run Xen Orchestra's client library (xen-api)")
    return node, npm


@pytest.fixture(scope="session")
def xen_api() -> str:
    """``node``, with npm ``xen-api`` installed in tests/xo/node_modules (from the npm
    registry, once)."""
    node, npm = _tools()
    installed = XO_DIR / "node_modules" / "xen-api" / "package.json"
    if not (
        installed.is_file() and json.loads(installed.read_text())["version"] == XEN_API_VERSION
    ):
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-save", f"xen-api@{XEN_API_VERSION}"],
            cwd=XO_DIR,
            check=True,
            timeout=INSTALL_TIMEOUT,
            stdout=subprocess.DEVNULL,
        )
    assert json.loads(installed.read_text())["version"] == XEN_API_VERSION
    return node


async def run_script(
    node: str, script: str, *args: str, ca: Path | None = None
) -> tuple[dict[str, Any], str]:
    """Run one of the tests/xo scripts (trusting the certificate ``ca`` besides the system's);
    the JSON object it prints, and its stderr. Fails the test if it failed or reports an
    error."""
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    if ca is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca)
    with trio.fail_after(CLIENT_TIMEOUT):
        done = await trio.run_process(
            [node, str(XO_DIR / script), *args],
            cwd=XO_DIR,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr
    out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert "error" not in out, out["error"] + "\n" + stderr
    return out, stderr


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return host_store(tmp_path, host=HOST, name_label="xfer-xo")


@pytest.mark.parametrize("transport", ["auto", "xml-rpc"])
async def test_xen_orchestra_client(
    xen_api: str, store: Store, nursery: trio.Nursery, transport: str
) -> None:
    """``auto`` is the library's default: JSON-RPC on /jsonrpc; ``xml-rpc`` is /xmlrpc."""
    api = Dispatcher(HostServices.open(store, HOST, ProcessHypervisor()))
    calls: list[str] = []
    run = api.run

    async def recording_run(method: str, params: list[Any], client: str | None = None) -> Any:
        calls.append(method)
        return await run(method, params, client)

    api.run = recording_run  # type: ignore[method-assign]
    router = Router()
    register_rpc(router, api)
    await nursery.start(api.host.tasks.serve)
    listeners = await trio.open_tcp_listeners(0, host="::1")
    await nursery.start(partial(serve, router, listeners))
    port = listeners[0].socket.getsockname()[1]
    url = f"http://[::1]:{port}"

    out, stderr = await run_script(xen_api, "client.mjs", url, "pw", transport)
    assert out["status"] == "connected"
    sr_uuid = store.all("SR")[0]["uuid"]
    assert out["pool"] == {
        "ref": f"OpaqueRef:{pool_uuid(api.host)}",
        "master": f"OpaqueRef:{HOST}",
        "default_SR": f"OpaqueRef:{sr_uuid}",
    }
    assert list(out["hosts"]) == [f"OpaqueRef:{HOST}"]
    assert out["hosts"][f"OpaqueRef:{HOST}"]["address"] == "::1"
    assert out["vdis"] == []
    assert {"SR", "host", "pool"} <= set(out["types"])
    assert out["created"].startswith("OpaqueRef:")
    seen = out["seen"]
    assert (seen["name_label"], seen["SR"], seen["type"]) == (
        "from xen-api",
        f"OpaqueRef:{sr_uuid}",
        "VDI",
    )
    assert int(seen["virtual_size"]) == 4 * 1024 * 1024  # a string over XML-RPC
    assert out["gone"] is True
    assert out["watchEventsError"] is None
    assert store.all("VDI") == []
    # what the library calls on connecting and while watching events
    assert calls[:3] == [
        "session.login_with_password",
        "pool.get_all_records",
        "system.listMethods",
    ]
    assert {"event.inject", "event.from", "VDI.get_all_records", "pool.get_all_records"} <= set(
        calls
    )
    assert "_watchEvents" not in stderr, stderr  # the library's warnings
    assert "_refreshCachedRecords" not in stderr, stderr
    assert "event.next" not in calls  # the modern event.from loop, not the legacy one


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_xen_orchestra_moves_a_disk(
    xen_api: str, store: Store, nursery: trio.Nursery, tmp_path: Path, scheme: str
) -> None:
    """putResource of a VHD stream of unknown length: the library first PUTs an empty body
    (a probe for redirections: it must change nothing and be answered 2xx), then declares a
    1 PiB Content-Length and cuts the connection after the data; the import ends at the
    VHD's footer, and the task's result is the VDI. The raw export then reads it back. Over
    HTTPS too (as Xen Orchestra reaches its hosts), the certificate verified."""
    size = 8 * MiB
    writes = [(0, b"\x5a" * 3000), (2 * MiB + 512, b"\xa5" * MiB), (size - 700, b"\x33" * 700)]
    vhd_file, out_file = tmp_path / "disk.vhd", tmp_path / "out.raw"
    make_dynamic(vhd_file, size, writes)
    expected = bytearray(size)
    for offset, data in writes:
        expected[offset : offset + len(data)] = data

    host = HostServices.open(store, HOST, ProcessHypervisor())
    router = Router()
    register_rpc(router, Dispatcher(host))
    export_raw_vdi.register(router, host)
    import_raw_vdi.register(router, host)
    await nursery.start(host.tasks.serve)
    listeners = await trio.open_tcp_listeners(0, host="::1")
    ca = None
    if scheme == "https":
        ca, key = make_certificate(tmp_path)
        context = server_ssl_context(str(ca), str(key))
        await nursery.start(partial(serve_tls, router, listeners, context, Limits()))
    else:
        await nursery.start(partial(serve, router, listeners))
    url = f"{scheme}://[::1]:{listeners[0].socket.getsockname()[1]}"
    args = (url, "pw", str(vhd_file), str(size), str(out_file))
    out, stderr = await run_script(xen_api, "transfer.mjs", *args, ca=ca)
    assert "missing length" in stderr  # the library did use its workaround
    assert out["importResult"] == out["vdi"]
    assert out["exportHeaders"]["content-length"] == str(size)
    assert out_file.read_bytes() == expected
    tasks = {row["name_label"]: row for row in store.all("task")}
    assert all(row["status"] == "success" for row in tasks.values()), tasks
