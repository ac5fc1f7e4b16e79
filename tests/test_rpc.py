"""migrate.rpc.dispatch: the XenAPI served over HTTP, driven by the official XenAPI SDK (XML-RPC)
and by httpx (JSON-RPC), on ::1 and 127.0.0.1."""

from __future__ import annotations

import json
import os
import threading
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import XenAPI

from migrate.addresses import parse_host
from migrate.guest.processes import ProcessHypervisor
from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.http.routing import Router
from migrate.http.server import serve
from migrate.interfaces import Interface, InterfaceAddress
from migrate.rpc import codec, host, network, pif, sr, task, vbd, vdi, vm
from migrate.rpc.dispatch import Dispatcher, register_rpc
from migrate.state.store import Store
from migrate.storage.sr import create_vdi, vdi_path
from support import HOST, TIMEOUT, close, failure, host_store, in_thread, wait_until

HOST_ADDRESS = "2001:db8::10"
MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    addresses = (
        InterfaceAddress("192.0.2.10", 24, "IPv4", False),
        InterfaceAddress("fe80::10", 64, "IPv6", True),
        InterfaceAddress(HOST_ADDRESS, 64, "IPv6", False),
    )
    interfaces = [
        Interface("eth0", "02:00:00:00:00:10", addresses),
        Interface("eth1", "02:00:00:00:00:11", ()),
    ]
    store = host_store(
        tmp_path, name_label="xfer-test", address=HOST_ADDRESS, interfaces=interfaces
    )
    yield store
    store.close()


@pytest.fixture
def api(store: Store) -> Dispatcher:
    return Dispatcher(HostServices.open(store, HOST, ProcessHypervisor()))


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    store: Store

    def url(self, path: str = "/") -> str:
        return parse_host(self.host).url(path, port=self.port)

    def sr_uuid(self) -> str:
        return str(self.store.all("SR")[0]["uuid"])

    def sr_path(self) -> str:
        return str(self.store.all("SR")[0]["path"])


@pytest.fixture(params=["::1", "127.0.0.1"])
async def server(request: pytest.FixtureRequest, nursery: trio.Nursery, api: Dispatcher) -> Server:
    router = Router()
    register_rpc(router, api)
    listeners = await trio.open_tcp_listeners(0, host=request.param)
    await nursery.start(partial(serve, router, listeners))
    return Server(request.param, listeners[0].socket.getsockname()[1], api.host.store)


def sdk_session(server: Server) -> Any:
    session = XenAPI.Session(server.url().rstrip("/"))
    session.xenapi.login_with_password("root", "pw", "1.0", "tests")
    return session


# The official SDK over XML-RPC


async def test_sdk_login_host_and_sr(server: Server) -> None:
    def run() -> None:
        session = sdk_session(server)
        x = session.xenapi
        try:
            host = x.session.get_this_host(session.handle)
            assert host == f"OpaqueRef:{HOST}"
            assert x.host.get_all() == [host]
            assert x.host.get_by_uuid(HOST) == host
            assert x.host.get_uuid(host) == HOST
            assert x.host.get_address(host) == HOST_ADDRESS
            assert x.host.get_name_label(host) == "xfer-test"
            record = x.host.get_record(host)
            assert record["uuid"] == HOST
            assert record["address"] == HOST_ADDRESS
            assert record["API_version_major"] == "2"  # ints travel as strings
            assert record["API_version_minor"] == "21"
            assert len(record["PIFs"]) == 2
            assert x.host.get_all_records() == {host: record}

            sr_uuid = server.sr_uuid()
            srs = x.SR.get_all()
            assert srs == [f"OpaqueRef:{sr_uuid}"]
            assert x.SR.get_by_uuid(sr_uuid) == srs[0]
            assert x.SR.get_by_name_label("Local storage") == srs
            assert x.SR.get_by_name_label("nothing") == []
            assert x.SR.get_uuid(srs[0]) == sr_uuid
            assert x.SR.get_name_label(srs[0]) == "Local storage"
            assert x.SR.get_VDIs(srs[0]) == []
            sr = x.SR.get_record(srs[0])
            assert sr["type"] in ("ext", "file")
            assert sr["content_type"] == ""
            assert sr["PBDs"] == []
            assert sr["VDIs"] == []
            assert x.SR.get_all_records() == {srs[0]: sr}
        finally:
            close(session)

    await in_thread(run)


async def test_sdk_vdi_create_and_destroy(server: Server) -> None:
    def run() -> None:
        session = sdk_session(server)
        x = session.xenapi
        try:
            sr = x.SR.get_all()[0]
            vdi = x.VDI.create(
                {
                    "SR": sr,
                    "virtual_size": str(8 * MiB),
                    "name_label": "disk 0",
                    "type": "user",
                    "sharable": False,
                    "read_only": False,
                    "other_config": {},
                }
            )
            uuid = x.VDI.get_uuid(vdi)
            assert vdi == f"OpaqueRef:{uuid}"
            path = vdi_path(server.sr_path(), uuid)
            assert os.path.isfile(path)
            assert x.VDI.get_all() == [vdi]
            assert x.VDI.get_by_uuid(uuid) == vdi
            assert x.VDI.get_SR(vdi) == sr
            assert x.VDI.get_virtual_size(vdi) == str(8 * MiB)
            assert x.SR.get_VDIs(sr) == [vdi]
            record = x.VDI.get_record(vdi)
            assert record["uuid"] == uuid
            assert record["SR"] == sr
            assert record["name_label"] == "disk 0"
            assert record["name_description"] == ""
            assert record["virtual_size"] == str(8 * MiB)
            assert record["physical_utilisation"] == str(os.path.getsize(path))
            assert record["type"] == "user"
            assert record["sharable"] is False
            assert record["read_only"] is False
            x.VDI.set_name_label(vdi, "renamed")
            assert x.VDI.get_all_records()[vdi]["name_label"] == "renamed"
            assert x.SR.get_record(sr)["VDIs"] == [vdi]

            assert x.VDI.destroy(vdi) == ""
            assert not os.path.exists(path)
            assert x.VDI.get_all() == []
            assert failure(lambda: x.VDI.get_record(vdi)) == ["HANDLE_INVALID", "VDI", vdi]
        finally:
            close(session)

    await in_thread(run)


async def test_sdk_failures(server: Server) -> None:
    def run() -> None:
        wrong = XenAPI.Session(server.url().rstrip("/"))
        details = failure(lambda: wrong.xenapi.login_with_password("root", "nope", "1.0", "t"))
        assert details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]
        details = failure(lambda: wrong.xenapi.login_with_password("nobody", "pw"))
        assert details[0] == "SESSION_AUTHENTICATION_FAILED"
        wrong("close")()

        session = sdk_session(server)
        x = session.xenapi
        try:
            bogus = "OpaqueRef:00000000-0000-0000-0000-000000000000"
            assert failure(lambda: x.SR.get_record(bogus)) == ["HANDLE_INVALID", "SR", bogus]
            assert failure(lambda: x.host.get_address("junk")) == [
                "HANDLE_INVALID",
                "host",
                "junk",
            ]
            assert failure(lambda: x.VDI.get_by_uuid("nope")) == ["UUID_INVALID", "VDI", "nope"]
            assert failure(lambda: x.VIF.get_all()) == ["MESSAGE_METHOD_UNKNOWN", "VIF.get_all"]
            assert failure(lambda: x.host.get_address()) == [
                "MESSAGE_PARAMETER_COUNT_MISMATCH",
                "host.get_address",
                "2",
                "1",
            ]
            sr = x.SR.get_all()[0]
            assert failure(lambda: x.VDI.create({"SR": sr, "virtual_size": "-1"}))[0] in (
                "INVALID_VALUE",
                "FIELD_TYPE_ERROR",
            )
            assert failure(lambda: x.VDI.create({"SR": bogus, "virtual_size": "1"})) == [
                "HANDLE_INVALID",
                "SR",
                bogus,
            ]
            assert x.VDI.get_all() == []
        finally:
            close(session)

    await in_thread(run)


async def test_sdk_network_and_pif(server: Server) -> None:
    def run() -> None:
        session = sdk_session(server)
        x = session.xenapi
        try:
            host = x.session.get_this_host(session.handle)
            pifs = {x.PIF.get_record(p)["device"]: p for p in x.PIF.get_all()}
            assert set(pifs) == {"eth0", "eth1"}
            eth0 = x.PIF.get_record(pifs["eth0"])
            assert eth0["MAC"] == "02:00:00:00:00:10"
            assert eth0["host"] == host
            assert eth0["IP"] == "192.0.2.10"
            assert eth0["IPv6"] == [f"{HOST_ADDRESS}/64"]
            assert eth0["management"] is True
            assert eth0["primary_address_type"] == "IPv6"
            assert x.PIF.get_IP(pifs["eth0"]) == "192.0.2.10"
            assert x.PIF.get_IPv6(pifs["eth0"]) == [f"{HOST_ADDRESS}/64"]
            eth1 = x.PIF.get_record(pifs["eth1"])
            assert eth1["IP"] == ""
            assert eth1["IPv6"] == []
            assert eth1["management"] is False

            network = x.PIF.get_network(pifs["eth0"])
            assert network in x.network.get_all()
            assert x.network.get_PIFs(network) == [pifs["eth0"]]
            assert x.network.get_name_label(network) == "Network on eth0"
            assert x.network.get_record(network)["PIFs"] == [pifs["eth0"]]
            assert sorted(x.host.get_record(host)["PIFs"]) == sorted(pifs.values())

            x.PIF.set_primary_address_type(pifs["eth0"], "IPv4")
            assert x.PIF.get_primary_address_type(pifs["eth0"]) == "IPv4"
            details = failure(lambda: x.PIF.set_primary_address_type(pifs["eth0"], "IPX"))
            assert details[0] == "INVALID_VALUE"
            assert x.PIF.get_primary_address_type(pifs["eth0"]) == "IPv4"
        finally:
            close(session)

    await in_thread(run)


async def test_xmlrpc_paths_session_invalid_and_list_methods(server: Server) -> None:
    def run() -> None:
        for path in ("/", "/RPC2", "/xmlrpc"):
            with xmlrpc.client.ServerProxy(server.url(path)) as proxy:
                login = getattr(proxy, "session.login_with_password")("root", "pw")
                assert login["Status"] == "Success"
                ref = login["Value"]
                assert ref.startswith("OpaqueRef:")
                assert getattr(proxy, "host.get_all")(ref)["Value"] == [f"OpaqueRef:{HOST}"]
                assert getattr(proxy, "session.logout")(ref) == {"Status": "Success", "Value": ""}
                assert getattr(proxy, "host.get_all")(ref) == {
                    "Status": "Failure",
                    "ErrorDescription": ["SESSION_INVALID", ref],
                }
                methods = getattr(proxy, "system.listMethods")()["Value"]
                assert "VDI.create" in methods
                assert "session.login_with_password" in methods
                assert "system.listMethods" in methods

    await in_thread(run)


async def test_malformed_xmlrpc_is_a_fault(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            response = await client.post(server.url("/RPC2"), content=b"<methodCall><oops")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml"
    with pytest.raises(xmlrpc.client.Fault):
        xmlrpc.client.loads(response.content)


# JSON-RPC


async def jsonrpc(client: httpx.AsyncClient, server: Server, method: str, *params: Any) -> Any:
    """The decoded JSON-RPC response to ``method(params)``."""
    request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": method}
    response = await client.post(server.url("/jsonrpc"), json=request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["id"] == method
    return answer


async def test_jsonrpc(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient() as client:
            answer = await jsonrpc(client, server, "session.login_with_password", "root", "pw")
            session = answer["result"]
            answer = await jsonrpc(client, server, "host.get_record", session, f"OpaqueRef:{HOST}")
            assert answer["result"]["API_version_major"] == 2  # a JSON number
            assert answer["result"]["address"] == HOST_ADDRESS

            sr = (await jsonrpc(client, server, "SR.get_all", session))["result"][0]
            record = {"SR": sr, "virtual_size": 4 * MiB, "name_label": "json"}
            vdi = (await jsonrpc(client, server, "VDI.create", session, record))["result"]
            size = await jsonrpc(client, server, "VDI.get_virtual_size", session, vdi)
            assert size["result"] == 4 * MiB
            answer = await jsonrpc(client, server, "VDI.destroy", session, vdi)
            assert answer["result"] == ""

            answer = await jsonrpc(client, server, "VDI.get_record", session, vdi)
            assert answer["error"] == {"code": 1, "message": "HANDLE_INVALID", "data": ["VDI", vdi]}
            answer = await jsonrpc(client, server, "session.login_with_password", "root", "x")
            assert answer["error"]["message"] == "SESSION_AUTHENTICATION_FAILED"
            answer = await jsonrpc(client, server, "host.get_all", "OpaqueRef:nope")
            assert answer["error"]["message"] == "SESSION_INVALID"
            answer = await jsonrpc(client, server, "host.get_all")
            assert answer["error"]["message"] == "MESSAGE_PARAMETER_COUNT_MISMATCH"
            answer = await jsonrpc(client, server, "no.such", session)
            assert answer["error"]["data"] == ["no.such"]
            await jsonrpc(client, server, "session.logout", session)

            big = {"jsonrpc": "2.0", "method": "no.such", "params": ["x" * (2 * MiB)], "id": 7}
            response = await client.post(server.url("/jsonrpc"), json=big)  # > 1 MiB default
            assert response.json()["error"]["data"] == ["no.such"]

            for body, code in ((b"{not json", -32700), (b"[1, 2]", -32600)):
                response = await client.post(server.url("/jsonrpc"), content=body)
                assert response.status_code == 200
                assert response.headers["content-type"] == "application/json"
                assert response.json()["error"]["code"] == code


async def test_a_large_body_is_decoded_beside_other_clients(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 14 MiB XML-RPC call takes seconds to decode: other clients are answered meanwhile
    (decoded in the event loop, it held every connection until it was done)."""
    big = xmlrpc.client.dumps(([0] * 500_000,), "no.such").encode()  # 14 MiB
    order: list[str] = []
    decoding = threading.Event()
    decode = codec.decode_xmlrpc

    def watched(body: bytes | bytearray) -> codec.Call:
        if len(body) == len(big):
            decoding.set()
        return decode(body)

    monkeypatch.setattr(codec, "decode_xmlrpc", watched)

    async def send_big() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.post(server.url("/RPC2"), content=big)
        assert xmlrpc.client.loads(response.content)[0][0]["ErrorDescription"][0] == (
            "MESSAGE_METHOD_UNKNOWN"
        )
        order.append("big")

    async with httpx.AsyncClient(timeout=TIMEOUT) as client, trio.open_nursery() as nursery:
        nursery.start_soon(send_big)
        await wait_until(decoding.is_set, what="the big body being decoded")
        answer = await jsonrpc(client, server, "session.login_with_password", "root", "pw")
        assert answer["result"].startswith("OpaqueRef:")
        order.append("small")
    assert order == ["small", "big"]


# The dispatcher without HTTP


async def test_api_checks_before_calling(api: Dispatcher) -> None:
    with pytest.raises(ApiError) as info:
        api.call("session.login_with_password", ["root"])
    assert info.value.description == [
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        "session.login_with_password",
        "2",
        "1",
    ]
    with pytest.raises(ApiError) as info:
        api.call("session.login_with_password", ["root", "pw", "1.0", "t", "extra"])
    assert info.value.params[1:] == ["4", "5"]
    with pytest.raises(ApiError) as info:
        api.call("host.get_all", [])
    assert info.value.code == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    with pytest.raises(ApiError) as info:
        api.call("host.get_all", [None])
    assert info.value.description == ["SESSION_INVALID", "None"]
    session = await api.run("session.login_with_password", ["root", "pw"])
    with pytest.raises(ApiError) as info:
        api.call("host.get_record", [session, 42])
    assert info.value.description == ["HANDLE_INVALID", "host", "42"]
    assert api.call("session.get_this_host", [session, session]) == f"OpaqueRef:{HOST}"
    assert set(api.methods()) >= {"VDI.create", "task.get_status", "PIF.get_IPv6"}
    api.call("session.logout", [session])


async def test_idle_sessions_expire(api: Dispatcher, store: Store) -> None:
    session = await api.run("session.login_with_password", ["root", "pw"])
    store.db.execute("UPDATE session SET last_active = last_active - 2 * 86400")
    with pytest.raises(ApiError) as info:
        api.call("SR.get_all", [session])
    assert info.value.description == ["SESSION_INVALID", session]
    fresh = await api.run("session.login_with_password", ["root", "pw"])
    assert [row["ref"] for row in store.db.execute("SELECT ref FROM session")] == [fresh]


async def test_vdi_in_use_and_invisible_vdis(api: Dispatcher, store: Store) -> None:
    session = await api.run("session.login_with_password", ["root", "pw"])
    sr = store.all("SR")[0]["uuid"]
    parent = create_vdi(store, sr, 2 * MiB, "parent")
    child = "7a1f3e0c-0000-4000-8000-000000000001"
    store.insert(
        "VDI",
        {
            "uuid": child,
            "sr": sr,
            "name_label": "child",
            "virtual_size": 2 * MiB,
            "format": "vhd",
            "parent": parent,
            "state": "creating",
        },
    )
    assert api.call("VDI.get_all", [session]) == [f"OpaqueRef:{parent}"]
    with pytest.raises(ApiError) as info:
        api.call("VDI.get_by_uuid", [session, child])
    assert info.value.description == ["UUID_INVALID", "VDI", child]
    with pytest.raises(ApiError) as info:
        api.call("VDI.destroy", [session, f"OpaqueRef:{parent}"])
    assert info.value.description == ["VDI_IN_USE", f"OpaqueRef:{parent}"]
    store.delete("VDI", child)
    api.call("VDI.destroy", [session, f"OpaqueRef:{parent}"])
    assert api.call("VDI.get_all", [session]) == []


async def test_tasks(api: Dispatcher, store: Store) -> None:
    session = await api.run("session.login_with_password", ["root", "pw"])
    uuid = "7a1f3e0c-0000-4000-8000-0000000000aa"
    store.insert(
        "task",
        {
            "uuid": uuid,
            "name_label": "import",
            "session": session,
            "status": "failure",
            "progress": 0.5,
            "result": "",
            "error_info": json.dumps(["VDI_IO_ERROR", "disk full"]),
            "created": 1.0e9,
            "finished": None,
        },
    )
    ref = f"OpaqueRef:{uuid}"
    assert api.call("task.get_all", [session]) == [ref]
    assert api.call("task.get_status", [session, ref]) == "failure"
    assert api.call("task.get_progress", [session, ref]) == 0.5
    assert api.call("task.get_result", [session, ref]) == ""
    assert api.call("task.get_error_info", [session, ref]) == ["VDI_IO_ERROR", "disk full"]
    record = api.call("task.get_record", [session, ref])
    assert record["name_label"] == "import"
    assert record["created"].year == 2001
    api.call("task.destroy", [session, ref])
    assert api.call("task.get_all", [session]) == []
    with pytest.raises(ApiError) as info:
        api.call("task.get_status", [session, ref])
    assert info.value.description == ["HANDLE_INVALID", "task", ref]


async def test_generated_accessors(api: Dispatcher, store: Store) -> None:
    """Every class module's FIELDS are its record's keys, and a generated getter serves each
    field of one record of each class as the record has it (types included)."""
    session = await api.run("session.login_with_password", ["root", "pw"])
    create_vdi(store, store.all("SR")[0]["uuid"], 2 * MiB, "disk")
    task_ref = api.call("task.create", [session, "work"])
    vm_ref = api.call("VM.create", [session, {"memory_static_max": str(MiB)}])
    vdi_ref = api.call("VDI.get_all", [session])[0]
    api.call("VBD.create", [session, {"VM": vm_ref, "VDI": vdi_ref}])
    methods = set(api.methods())
    for module in (host, sr, vdi, vm, vbd, network, pif, task):
        cls = module.CLASS
        records = api.call(f"{cls}.get_all_records", [session])
        assert records, cls
        assert sorted(records) == sorted(api.call(f"{cls}.get_all", [session]))
        ref, record = sorted(records.items())[0]
        assert sorted(record) == sorted(module.FIELDS.split()), cls
        assert api.call(f"{cls}.get_record", [session, ref]) == record
        assert api.call(f"{cls}.get_by_uuid", [session, record["uuid"]]) == ref
        for field, value in record.items():
            assert f"{cls}.get_{field}" in methods
            got = api.call(f"{cls}.get_{field}", [session, ref])
            assert got == value and type(got) is type(value), (cls, field, got, value)
        with pytest.raises(ApiError) as info:
            api.call(f"{cls}.get_uuid", [session, ref, "extra"])
        assert info.value.code == "MESSAGE_PARAMETER_COUNT_MISMATCH"
    assert api.call("task.get_progress", [session, task_ref]) == 0.0
