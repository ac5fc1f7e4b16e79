"""Shared fixtures: the real qemu-img and qemu-io, a runner for the ``xfer`` CLI, an empty
state store with its default SR, and a real ``xfer serve`` per module."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
