"""Claims on VDIs: one writer at a time, and no destruction or snapshot under a writer.

An import writes a staged copy beside the VDI and replaces its file at the end: readers
(exports) go on meanwhile with the old content, but a second writer, a destroy or a snapshot
would lose one of the two outcomes: they get ``VDI_IN_USE`` (a second writer after waiting a
little for the first to end). A live VM holds its disks likewise, for as long as its domain
exists (its block backend writes the file in place). Claims are taken inside database calls
(so that checking a row and claiming its VDI are one step) or in trio, and released in trio,
where waiters are woken.
"""

from __future__ import annotations

import threading

import trio

IMPORT = "import"
"""The holder of an import's claim."""


def vm_holder(vm: str) -> str:
    """The holder of the claims of VM ``vm``'s domain on its disks."""
    return f"VM {vm}"


class Claims:
    """The VDIs being written, each with its holder and the event set when it ends."""

    def __init__(self) -> None:
        self._writers: dict[str, tuple[str, trio.Event]] = {}
        self._lock = threading.Lock()

    def writing(self, vdi: str) -> bool:
        """Whether a writer holds ``vdi``."""
        return self.holder(vdi) is not None

    def holder(self, vdi: str) -> str | None:
        """Who writes ``vdi`` (:data:`IMPORT`, or :func:`vm_holder`), if anyone."""
        with self._lock:
            claim = self._writers.get(vdi)
        return None if claim is None else claim[0]

    def held_by(self, holder: str) -> list[str]:
        """The VDIs ``holder`` writes."""
        with self._lock:
            return [vdi for vdi, claim in self._writers.items() if claim[0] == holder]

    def claim_writer(self, vdi: str, holder: str = IMPORT) -> bool:
        """Claim ``vdi`` for one writer, ``holder``; False if another one holds it."""
        with self._lock:
            if vdi in self._writers:
                return False
            self._writers[vdi] = (holder, trio.Event())
            return True

    def release_writer(self, vdi: str) -> None:
        """End the writer's claim on ``vdi`` and wake whoever waits for it (in trio)."""
        with self._lock:
            ended = self._writers.pop(vdi, None)
        if ended is not None:
            ended[1].set()

    async def wait_for_writer(self, vdi: str, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for no writer to hold ``vdi``."""
        with trio.move_on_after(timeout):
            while True:
                with self._lock:
                    claim = self._writers.get(vdi)
                if claim is None:
                    return
                await claim[1].wait()
