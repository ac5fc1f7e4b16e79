"""The host's state brought up to date at start, before anything is served: its record and
interfaces, its SRs (made on first start, every one reconciled after a crash), the tasks an
earlier run left unfinished, the VMs whose domains ended with it, and the password of its
user."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Sequence

from migrate.addresses import Family
from migrate.formats.xapi import DEFAULT_USER
from migrate.host import tasks
from migrate.host.identity import prepare_host
from migrate.state.store import Store
from migrate.state.vms import halt_orphans
from migrate.storage.reconcile import reconcile
from migrate.storage.sr import ensure_sr

log = logging.getLogger("xfer.host")


def prepare_state(
    store: Store,
    state_dir: str,
    primary: Family,
    password: str | None = None,
    srs: Sequence[str] = (),
    shared_srs: Sequence[str] = (),
) -> str:
    """Bring the state database up to date for this start; the host's uuid (synchronous).

    The default SR lives in ``state_dir/sr``; ``srs`` are more SR directories, ``shared_srs``
    SR directories other hosts attach too (their uuid kept in the directory); ``password``
    replaces the user's (None keeps the stored one, or generates one on first start)."""
    host_uuid = prepare_host(store, primary)
    if not store.all("SR", is_default=1):  # the first start (or one cut short before it)
        ensure_sr(store, os.path.join(state_dir, "sr"), "Local storage", default=True)
    for path in srs:
        real = os.path.realpath(path)
        ensure_sr(store, real, f"Local storage at {real}")
    for path in shared_srs:
        real = os.path.realpath(path)
        ensure_sr(store, real, f"Shared storage at {real}", shared=True)
    for sr in store.all("SR"):
        repairs = reconcile(store, sr["uuid"])
        log.info("SR %s at %s: %d repair(s)", sr["uuid"], sr["path"], len(repairs))
    for uuid in tasks.fail_unfinished(store):
        log.warning("task %s: left unfinished by an earlier run, ended as failed", uuid)
    for uuid in halt_orphans(store):
        log.warning("VM %s: its domain ended with an earlier run, now Halted", uuid)
    _set_password(store, password)
    return host_uuid


def _set_password(store: Store, password: str | None) -> None:
    if password is not None:
        store.set_password(DEFAULT_USER, password)
        log.info("password for %s set", DEFAULT_USER)
    elif store.credential(DEFAULT_USER) is None:
        generated = secrets.token_urlsafe(18)
        store.set_password(DEFAULT_USER, generated)
        print(f"generated password for {DEFAULT_USER}: {generated}", file=sys.stderr, flush=True)
