"""``xfer migrate``: live-migrate a VM from one host to another, as xapi's clients do.

On the destination (``--to``): log in, pick the network (``--network``, else the one of the
host's management PIF) and ask ``host.migrate_receive`` for the dest map. On the source
(``--host``): ``Async.VM.migrate_send`` with that map and the options, then follow the task:
a progress bar on a terminal from its progress and the rounds so far (the report in the
task's ``other_config``, :data:`~migrate.cli.migration_report.REPORT_KEY`), and at the end
the report (:mod:`migrate.cli.migration_report`) as a table, or as JSON with ``--json``.
Ctrl-C cancels the task, which leaves the VM running on the source; a second one stops
waiting for that.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trio

from migrate.cli.http_client import ClientError, Target, host_of, run_client
from migrate.cli.migration_report import (
    REPORT_KEY,
    ReportError,
    parse_report,
    progress_note,
    render,
)
from migrate.cli.progress import task_bar
from migrate.cli.rpc_client import ApiFailure, Session, open_session
from migrate.nursery import open_nursery

POLL = 0.1
"""Seconds between two looks at the migration's task."""
CANCEL_WAIT = 10.0
"""How long Ctrl-C waits for the cancelled task to end before giving up on it."""


def migrate_command(args: argparse.Namespace) -> int:
    """``xfer migrate --host SRC --vm UUID --to DST [--network NET] [--max-downtime MS]
    [--max-rounds N] [--verify] [--no-live] [--json]``."""
    return run_client(args, functools.partial(migrate, args=args))


def options_of(args: argparse.Namespace) -> dict[str, str]:
    """The ``options`` map of ``VM.migrate_send`` (strings, as XenAPI maps are) from the
    command line; only what was given, the host has the defaults."""
    options = {}
    if args.max_downtime is not None:
        options["max_downtime"] = str(args.max_downtime)
    if args.max_rounds is not None:
        options["max_rounds"] = str(args.max_rounds)
    if args.verify:
        options["verify"] = "true"
    return options


async def migrate(client: httpx.AsyncClient, source: Target, args: argparse.Namespace) -> int:
    """Migrate ``args.vm`` from ``source`` to ``args.to``; prints the report."""
    destination = dataclasses.replace(
        source,
        host=host_of(args.to),
        user=args.to_user or source.user,
        password=args.to_password if args.to_password is not None else source.password,
    )
    async with (
        open_session(client, destination) as there,
        open_session(client, source) as here,
    ):
        vm = await here.call("VM.get_by_uuid", args.vm)
        host = await there.call("session.get_this_host", there.ref)
        network = await find_network(there, host, args.network)
        dest = await there.call("host.migrate_receive", host, network, {})
        interrupt = Interrupt()
        # from here Ctrl-C is a request to cancel the task, even before its ref came back
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with open_nursery(prefer=(KeyboardInterrupt, ClientError)) as nursery:
                nursery.start_soon(interrupt.watch, signals, nursery.cancel_scope)
                task = await here.call(
                    "Async.VM.migrate_send", vm, dest, not args.no_live, {}, {}, options_of(args)
                )
                try:
                    description = f"migrating {args.vm[:8]}"
                    record = await follow(here, task, description, args.quiet, interrupt)
                finally:
                    with contextlib.suppress(ClientError), trio.CancelScope(shield=True):
                        await here.call("task.destroy", task)
                nursery.cancel_scope.cancel()
        if interrupt.forced:
            print("xfer: stopped waiting for the migration to be cancelled", file=sys.stderr)
            raise KeyboardInterrupt
    text = (record.get("other_config") or {}).get(REPORT_KEY)
    if text is None:
        raise ClientError("the migration succeeded but the host kept no report of it")
    report = parse_report(text)
    if args.json:
        print(json.dumps(json.loads(text) if isinstance(text, str) else text, indent=2))
    else:
        print(render(report), end="")
    return 0


class Interrupt:
    """Ctrl-C while a migration runs: the first asks for its task to be cancelled (and the
    command waits for that, at most :data:`CANCEL_WAIT` seconds), a second stops waiting."""

    def __init__(self) -> None:
        self.asked = trio.Event()
        self.forced = False

    async def watch(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        """Take the SIGINTs from ``signals``; the second cancels ``scope``."""
        async for _ in signals:
            if self.asked.is_set():
                self.forced = True
                scope.cancel()
                return
            self.asked.set()


async def find_network(session: Session, host: str, name: str | None) -> str:
    """The network ``name`` names (its uuid, name label or bridge) on ``session``'s host;
    without a name, the network of ``host``'s management PIF. ClientError naming the choices
    when there is no such network, or several."""
    networks: dict[str, dict[str, Any]] = await session.call("network.get_all_records")
    if name is not None:
        found = [
            ref
            for ref, record in networks.items()
            if name in (record.get("uuid"), record.get("name_label"), record.get("bridge"))
        ]
        if len(found) == 1:
            return found[0]
        known = ", ".join(
            sorted(str(r.get("bridge") or r.get("name_label")) for r in networks.values())
        )
        if not found:
            raise ClientError(f"the destination has no network {name!r} (it has: {known})")
        raise ClientError(f"{name!r} names {len(found)} networks on the destination: give a uuid")
    pifs: dict[str, dict[str, Any]] = await session.call("PIF.get_all_records")
    for pif in sorted(pifs.values(), key=lambda p: str(p.get("device", ""))):
        if pif.get("host") == host and pif.get("management") and pif.get("network") in networks:
            return str(pif["network"])
    raise ClientError("the destination has no management interface: give --network")


async def follow(
    session: Session, task: str, description: str, quiet: bool, interrupt: Interrupt
) -> dict[str, Any]:
    """Wait for ``task`` to end, showing its progress and the report's latest round on a
    terminal; its record once it succeeded. Its failure as an ApiFailure. Once ``interrupt``
    is asked, the task is cancelled and, when it ended (or :data:`CANCEL_WAIT` passed), what
    became of the VM is said on stderr and KeyboardInterrupt raised."""
    cancelled_at: float | None = None
    with task_bar(description, quiet) as bar:
        while True:
            if interrupt.asked.is_set() and cancelled_at is None:
                cancelled_at = trio.current_time()
                with contextlib.suppress(ClientError):  # it may have ended meanwhile
                    await session.call("task.cancel", task)
            record: dict[str, Any] = await session.call("task.get_record", task)
            status = str(record.get("status"))
            if status not in ("pending", "cancelling"):
                break
            if cancelled_at is not None and trio.current_time() - cancelled_at > CANCEL_WAIT:
                break
            _show(bar, record)
            with trio.move_on_after(POLL):
                await interrupt.asked.wait()  # at once on Ctrl-C
        if status == "success":
            _show(bar, record)
    if interrupt.asked.is_set():
        print(f"xfer: the migration was cancelled ({_outcome(status)})", file=sys.stderr)
        raise KeyboardInterrupt
    if status == "success":
        return record
    if status == "failure":
        error = [str(e) for e in record.get("error_info") or ["INTERNAL_ERROR"]]
        raise ApiFailure(error[0], error[1:])
    raise ClientError(f"the migration's task ended {status}")


def _show(bar: Any, record: dict[str, Any]) -> None:
    """Move the bar to the task's progress, its note to the report's latest round."""
    with contextlib.suppress(TypeError, ValueError):
        bar.n = round(100 * min(max(float(record.get("progress", 0.0)), 0.0), 1.0))
    text = (record.get("other_config") or {}).get(REPORT_KEY)
    if text is not None:
        with contextlib.suppress(ReportError):
            bar.set_postfix_str(progress_note(parse_report(text)), refresh=False)
    bar.refresh()


def _outcome(status: str) -> str:
    """What a cancelled migration's task ``status`` means for the VM, in a few words."""
    if status == "cancelled":
        return "the VM stays on the source"
    if status == "success":
        return "too late: it had already succeeded"
    if status == "failure":
        return "it failed: the VM stays on the source"
    return f"its task is still {status}"
