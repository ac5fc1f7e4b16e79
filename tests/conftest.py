"""Shared fixtures: the real qemu-img and qemu-io, a runner for the ``xfer`` CLI, an empty
state store with its default SR, and a real ``xfer serve`` per module; the timeout of trio
tests."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_timeout
import trio

from migrate.state.store import Store
from migrate.storage.sr import ensure_sr
from support import XFER, Daemon, running_daemon


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: `make deps` should have installed qemu-utils")
        pytest.skip(f"{name} not installed (qemu-utils); `make test` installs it")
    return path


@pytest.fixture(scope="session")
def qemu_img() -> str:
    """Path of the real qemu-img."""
    return _tool("qemu-img")


@pytest.fixture(scope="session")
def qemu_io() -> str:
    """Path of the real qemu-io."""
    return _tool("qemu-io")


@pytest.fixture
def xfer() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run ``xfer ARGS...`` in a subprocess; returns the completed process (never raises)."""

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*XFER, *args], input=input, capture_output=True, timeout=300, check=False
        )

    return run


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An empty state store in ``tmp_path`` (modules serving the XenAPI override it with
    :func:`support.host_store`)."""
    store = Store.open(str(tmp_path / "state.db"))
    yield store
    store.close()


@pytest.fixture
def sr_uuid(store: Store, tmp_path: Path) -> str:
    """The uuid of the default SR, in ``tmp_path / "sr"``."""
    return ensure_sr(store, str(tmp_path / "sr"), "Local storage", default=True)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real ``xfer serve`` on ``[::]`` for the module (password ``support.PASSWORD``)."""
    with running_daemon(tmp_path_factory.mktemp("daemon")) as running:
        yield running


# Timeouts (pytest-timeout; the default is in pyproject.toml)

GRACE = 10.0
"""Seconds pytest-timeout's signal waits past a trio test's own deadline before it interrupts
whatever runs (a hang in an async fixture, or code that never yields to trio)."""
_DEADLINE = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """A trio test's body runs under a trio deadline of its timeout, so that a hang fails
    that test alone: pytest-timeout's SIGALRM raising inside trio's scheduler would leave
    trio broken for the next test. The signal stays, GRACE seconds later, as a backstop."""
    if item.get_closest_marker("trio") is None:
        return None
    item.stash[_DEADLINE] = settings.timeout
    backstop = settings._replace(timeout=settings.timeout + GRACE)
    result: bool = pytest_timeout.pytest_timeout_set_timer(item, backstop)
    return result


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Put the deadline around a trio test's body, before pytest-trio wraps it in trio.run."""
    seconds = item.stash.get(_DEADLINE, None)
    if isinstance(item, pytest.Function) and seconds and not hasattr(item.obj, "hypothesis"):
        item.obj = _within(item.obj, seconds)
    yield


def _within(test: Callable[..., Awaitable[None]], seconds: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(**kwargs: Any) -> None:
        try:
            with trio.fail_after(seconds) as scope:
                await test(**kwargs)
        except trio.TooSlowError:
            if not scope.cancelled_caught:
                raise  # the test's own
            # the traceback above this failure shows where the test was waiting
            pytest.fail(f"Timeout (>{seconds}s): the test's trio deadline")

    return bounded
