"""migrate.rpc.event, pool and Async calls: the event system fed by every change of every
record, driven by the official XenAPI SDK over ``::1``; tasks and their cancellation."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import XenAPI

from migrate.guest.processes import ProcessHypervisor
from migrate.host import tasks
from migrate.host.errors import ApiError
from migrate.host.services import HostServices
from migrate.http.routing import Router
from migrate.http.server import serve
from migrate.rpc.dispatch import Dispatcher, register_rpc
from migrate.rpc.event import MAX_TIMEOUT
from migrate.rpc.pool import pool_uuid
from migrate.state.store import Store
from support import (
    HOST,
    TIMEOUT,
    close,
    failure,
    host_store,
    in_thread,
    wait_until,
    wait_until_sync,
)

MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = host_store(tmp_path, name_label="xfer-ev")
    yield store
    store.close()


@pytest.fixture
def api(store: Store) -> Dispatcher:
    return Dispatcher(HostServices.open(store, HOST, ProcessHypervisor()))


@pytest.fixture
async def url(nursery: trio.Nursery, api: Dispatcher) -> str:
    router = Router()
    register_rpc(router, api)
    await nursery.start(api.host.tasks.serve)
    listeners = await trio.open_tcp_listeners(0, host="::1")
    await nursery.start(partial(serve, router, listeners))
    return f"http://[::1]:{listeners[0].socket.getsockname()[1]}"


def login(url: str) -> Any:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password("root", "pw", "1.0", "tests")
    return session


def event_from(x: Any, classes: list[str], token: str, timeout: float) -> dict[str, Any]:
    return dict(getattr(x.event, "from")(classes, token, timeout))


def create_vdi(x: Any, name: str = "disk") -> str:
    sr = x.SR.get_all()[0]
    return str(x.VDI.create({"SR": sr, "virtual_size": str(4 * MiB), "name_label": name}))


def wait_task(x: Any, task: str) -> str:
    """The final status of ``task``, once it left pending and cancelling."""

    def ended() -> str | None:
        status = str(x.task.get_status(task))
        return None if status in ("pending", "cancelling") else status

    return wait_until_sync(ended, what=f"task {task} to end")


async def test_pool(url: str, api: Dispatcher) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            pools = x.pool.get_all()
            ref = f"OpaqueRef:{pool_uuid(api.host)}"
            assert pools == [ref]
            assert x.pool.get_master(ref) == f"OpaqueRef:{HOST}"
            assert x.pool.get_uuid(ref) == pool_uuid(api.host)
            assert x.pool.get_by_uuid(pool_uuid(api.host)) == ref
            assert x.pool.get_name_label(ref) == ""
            record = x.pool.get_record(ref)
            assert record["master"] == f"OpaqueRef:{HOST}"
            assert record["default_SR"] == x.SR.get_all()[0]
            assert record["other_config"] == {}
            assert x.pool.get_all_records() == {ref: record}
            assert session.API_version == "2.21"  # the SDK: pool.get_all, pool.get_master
            bogus = f"OpaqueRef:{HOST}"
            assert failure(lambda: x.pool.get_record(bogus)) == ["HANDLE_INVALID", "pool", bogus]
            methods = x.system.listMethods()
            for name in ("pool.get_all_records", "event.from", "Async.VDI.create", "task.cancel"):
                assert name in methods
        finally:
            close(session)

    await in_thread(run)
    assert pool_uuid(api.host) == pool_uuid(
        HostServices.open(api.host.store, HOST, ProcessHypervisor())
    )  # stable


async def test_event_from(url: str, api: Dispatcher) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            # the empty token: every current record as "add"
            everything = event_from(x, ["*"], "", 1.0)
            added = {(e["class"], e["ref"]) for e in everything["events"]}
            assert {e["operation"] for e in everything["events"]} == {"add"}
            assert ("host", f"OpaqueRef:{HOST}") in added
            assert ("pool", f"OpaqueRef:{pool_uuid(api.host)}") in added
            assert ("sr", x.SR.get_all()[0]) in added
            assert everything["valid_ref_counts"]["vdi"] == "0"
            token = everything["token"]
            assert token.isdigit()

            vdi = create_vdi(x, "watched")
            result = event_from(x, ["vdi"], token, 5.0)
            [event] = result["events"]
            assert event["class"] == "vdi"
            assert event["operation"] in ("add", "mod")
            assert event["ref"] == vdi
            assert event["snapshot"]["name_label"] == "watched"
            assert event["snapshot"]["uuid"] == x.VDI.get_uuid(vdi)
            assert {"id", "timestamp"} <= set(event)
            assert result["valid_ref_counts"] == {"vdi": "1"}
            created = result["token"]
            assert int(created) > int(token)

            # the classes filter (any case; unknown classes ignored)
            assert event_from(x, ["SR", "host", "nothing"], token, 0.0)["events"] == []
            assert [e["ref"] for e in event_from(x, ["VDI"], token, 0.0)["events"]] == [vdi]
            assert vdi in [e["ref"] for e in event_from(x, ["*"], token, 0.0)["events"]]

            x.VDI.destroy(vdi)
            [event] = event_from(x, ["vdi"], created, 5.0)["events"]
            assert (event["operation"], event["ref"], event["class"]) == ("del", vdi, "vdi")
            assert "snapshot" not in event

            assert failure(lambda: event_from(x, ["vdi"], "junk", 0.0)) == [
                "EVENT_FROM_TOKEN_PARSE_FAILURE",
                "junk",
            ]
        finally:
            close(session)

    await in_thread(run)


async def test_event_from_timeout_keeps_the_token(url: str) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            token = event_from(x, ["vdi"], "", 0.0)["token"]
            start = time.monotonic()
            result = event_from(x, ["vdi"], token, 0.5)
            assert time.monotonic() - start >= 0.45
            assert result["events"] == []
            assert result["token"] == token
        finally:
            close(session)

    await in_thread(run)


async def test_event_from_under_the_sdk_spelling(url: str) -> None:
    """``from`` is a Python keyword: SDK users write ``session.xenapi.event_from``."""

    def run() -> None:
        session = login(url)
        try:
            first = session.xenapi.event_from(["vdi"], "", 0.0)
            vdi = create_vdi(session.xenapi)
            later = session.xenapi.event_from(["vdi"], first["token"], 5.0)
            assert [(e["class"], e["ref"]) for e in later["events"]] == [("vdi", vdi)]
        finally:
            close(session)

    await in_thread(run)


def waiting_for_a_change(api: Dispatcher) -> bool:
    """Whether an ``event.from`` or ``event.next`` waits on the host's change feed (read off
    the feed's trio.Event: the feed counts no waiters of its own)."""
    return api.host.db.changes._changed.statistics().tasks_waiting > 0


async def test_blocking_event_from_wakes_on_another_clients_change(
    url: str, api: Dispatcher
) -> None:
    """An ``event.from`` waiting far longer than the test may take (MAX_TIMEOUT) answers
    another client's change, and that client's calls are served meanwhile."""
    watcher = await in_thread(lambda: login(url))
    token = await in_thread(lambda: event_from(watcher.xenapi, ["vdi"], "", 0.0)["token"])
    result: dict[str, Any] = {}

    def watch() -> None:
        result.update(event_from(watcher.xenapi, ["vdi"], token, MAX_TIMEOUT))

    def change() -> str:
        session = login(url)
        try:
            assert session.xenapi.VDI.get_all() == []
            return create_vdi(session.xenapi, "other client")
        finally:
            close(session)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, watch)  # fails the test if not woken within TIMEOUT
        await wait_until(lambda: waiting_for_a_change(api), what="event.from to wait")
        created = await in_thread(change)
    assert [e["ref"] for e in result["events"]] == [created]
    await in_thread(lambda: close(watcher))


async def test_register_next_unregister(url: str) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            x.event.register(["vdi"])
            vdi = create_vdi(x)
            x.SR.get_record(x.SR.get_all()[0])
            events = x.event.next()
            assert [(e["class"], e["ref"]) for e in events] == [("vdi", vdi)]
            x.VDI.destroy(vdi)
            assert [(e["operation"], e["ref"]) for e in x.event.next()] == [("del", vdi)]
            x.event.unregister(["vdi"])
            handle = session.handle
            assert failure(lambda: x.event.next()) == ["SESSION_NOT_REGISTERED", handle]
        finally:
            close(session)

    await in_thread(run)


async def test_inject(url: str, api: Dispatcher) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            token = event_from(x, ["*"], "", 0.0)["token"]
            sr = x.SR.get_all()[0]
            injected = x.event.inject("SR", sr)
            assert int(injected) > int(token)
            [event] = event_from(x, ["sr"], token, 0.0)["events"]
            assert (event["class"], event["operation"], event["ref"]) == ("sr", "mod", sr)
            assert event["snapshot"]["name_label"] == "Local storage"
            assert event_from(x, ["sr"], injected, 0.0)["events"] == []

            pool = f"OpaqueRef:{pool_uuid(api.host)}"
            again = x.event.inject("pool", pool)  # what Xen Orchestra does first
            [event] = event_from(x, ["pool"], injected, 0.0)["events"]
            assert (event["class"], event["ref"]) == ("pool", pool)
            assert event["snapshot"]["master"] == f"OpaqueRef:{HOST}"
            assert event_from(x, ["pool"], again, 0.0)["events"] == []
            bogus = "OpaqueRef:00000000-0000-0000-0000-000000000000"
            assert failure(lambda: x.event.inject("SR", bogus)) == ["HANDLE_INVALID", "SR", bogus]
        finally:
            close(session)

    await in_thread(run)


async def test_async_vdi_create_and_destroy(url: str) -> None:
    def run() -> None:
        session = login(url)
        x = session.xenapi
        try:
            sr = x.SR.get_all()[0]
            task = x.Async.VDI.create({"SR": sr, "virtual_size": str(4 * MiB), "name_label": "a"})
            assert task in x.task.get_all()
            assert wait_task(x, task) == "success"
            vdis = x.VDI.get_all()
            assert len(vdis) == 1
            assert x.task.get_result(task) == f"<value>{vdis[0]}</value>"
            assert x.task.get_progress(task) == 1.0
            record = x.task.get_record(task)
            assert record["name_label"] == "Async.VDI.create"
            assert record["error_info"] == []
            assert failure(lambda: x.task.cancel(task))[0] == "OPERATION_NOT_ALLOWED"

            task = x.Async.VDI.destroy(vdis[0])
            assert wait_task(x, task) == "success"
            assert x.task.get_result(task) == ""
            assert x.VDI.get_all() == []

            bogus = "OpaqueRef:00000000-0000-0000-0000-000000000000"
            task = x.Async.VDI.create({"SR": bogus, "virtual_size": "1"})
            assert wait_task(x, task) == "failure"
            assert x.task.get_error_info(task) == ["HANDLE_INVALID", "SR", bogus]
            x.task.destroy(task)
        finally:
            close(session)

    await in_thread(run)


async def test_task_cancel(api: Dispatcher, store: Store, nursery: trio.Nursery) -> None:
    session = await api.run("session.login_with_password", ["root", "pw"])
    sr = f"OpaqueRef:{store.all('SR')[0]['uuid']}"
    args = {"SR": sr, "virtual_size": 4 * MiB, "name_label": "never"}
    with pytest.raises(ApiError) as info:  # nobody serves the tasks yet
        await api.run("Async.VDI.create", [session, args])
    assert info.value.code == "INTERNAL_ERROR"

    await nursery.start(api.host.tasks.serve)
    # an Async call cancelled while it waits for its turn never runs
    release = threading.Event()
    nursery.start_soon(api.host.db.call, release.wait)  # the database busy with a long call
    await trio.testing.wait_all_tasks_blocked()
    uuid = str(uuidlib.uuid4())
    tasks.insert(store, uuid, session, "Async.VDI.create")  # (the database thread waits)
    ran: list[str] = []
    api.host.tasks.start(uuid, lambda: ran.append(uuid))
    await trio.testing.wait_all_tasks_blocked()  # the task waits for its turn
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as cancelling:
            cancelling.start_soon(api.host.tasks.cancel, uuid)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    await wait_until(lambda: store.get("task", uuid)["status"] == "cancelled", what="cancelled")
    assert ran == []
    assert store.get("task", uuid)["progress"] == 1.0

    # through the API: a task that already ran cannot be cancelled
    task = await api.run("Async.VDI.create", [session, args])
    uuid = task.removeprefix("OpaqueRef:")
    await wait_until(lambda: store.get("task", uuid)["status"] != "pending", what="the task")
    with pytest.raises(ApiError) as info:
        await api.run("task.cancel", [session, task])
    assert info.value.code == "OPERATION_NOT_ALLOWED"

    # a task a client made for itself stays cancelling: nobody runs it
    own = await api.run("task.create", [session, "mine", ""])
    await api.run("task.cancel", [session, own])
    assert await api.run("task.get_status", [session, own]) == "cancelling"


async def test_event_from_waits_without_the_lock(api: Dispatcher, store: Store) -> None:
    session = await api.run("session.login_with_password", ["root", "pw"])
    token = (await api.run("event.from", [session, ["task"], "", 0.0]))["token"]
    answers: list[dict[str, Any]] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                answers.append(await api.run("event.from", [session, ["task"], token, 20.0]))

            nursery.start_soon(watch)
            await wait_until(lambda: waiting_for_a_change(api), what="event.from to wait")
            assert not answers
            own = await api.run("task.create", [session, "wake up", ""])  # not blocked
    [event] = answers[0]["events"]
    assert event["ref"] == own
    assert event["snapshot"]["name_label"] == "wake up"
