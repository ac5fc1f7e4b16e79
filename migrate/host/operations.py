"""Operations on VMs, one at a time per VM: a start, a shutdown or a migration holds its VM
from the check of the power state to the record of the outcome, so that two of them never
act on one domain at once (a second gets xapi's ``OTHER_OPERATION_IN_PROGRESS``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from migrate.formats.xapi import ref
from migrate.host.errors import OTHER_OPERATION_IN_PROGRESS, ApiError


class Operations:
    """The operation each busy VM is in (used from trio only)."""

    def __init__(self) -> None:
        self._current: dict[str, str] = {}

    def current(self, vm: str) -> str | None:
        """The operation VM ``vm`` is in, if any."""
        return self._current.get(vm)

    @contextmanager
    def exclusive(self, vm: str, operation: str) -> Iterator[None]:
        """Hold VM ``vm`` for ``operation`` in this block; OTHER_OPERATION_IN_PROGRESS
        (naming the VM and the operation it is in) while another one holds it."""
        busy = self._current.get(vm)
        if busy is not None:
            raise ApiError(OTHER_OPERATION_IN_PROGRESS, "VM", ref(vm), busy)
        self._current[vm] = operation
        try:
            yield
        finally:
            del self._current[vm]
