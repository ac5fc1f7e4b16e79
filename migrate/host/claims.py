"""Claims on VDIs: one writer at a time, and no destruction or snapshot under a writer.

An import writes a staged copy beside the VDI and replaces its file at the end: readers
(exports) go on meanwhile with the old content, but a second writer, a destroy or a snapshot
would lose one of the two outcomes: they get ``VDI_IN_USE`` (a second writer after waiting a
little for the first to end). Claims are taken inside database calls (so that checking a row
and claiming its VDI are one step) and released in trio, where waiters are woken.
"""

from __future__ import annotations

import threading

import trio


class Claims:
    """The VDIs being written, each with the event set when its writer ends."""

    def __init__(self) -> None:
        self._writers: dict[str, trio.Event] = {}
        self._lock = threading.Lock()

    def writing(self, vdi: str) -> bool:
        """Whether an import is writing ``vdi``."""
        with self._lock:
            return vdi in self._writers

    def claim_writer(self, vdi: str) -> bool:
        """Claim ``vdi`` for one writer; False if another one holds it."""
        with self._lock:
            if vdi in self._writers:
                return False
            self._writers[vdi] = trio.Event()
            return True

    def release_writer(self, vdi: str) -> None:
        """End the writer's claim on ``vdi`` and wake whoever waits for it (in trio)."""
        with self._lock:
            ended = self._writers.pop(vdi, None)
        if ended is not None:
            ended.set()

    async def wait_for_writer(self, vdi: str, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for no writer to hold ``vdi``."""
        with trio.move_on_after(timeout):
            while True:
                with self._lock:
                    ended = self._writers.get(vdi)
                if ended is None:
                    return
                await ended.wait()
