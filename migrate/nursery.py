"""Nurseries that fail with the failure itself: the one exception that stands for a group.

trio wraps whatever escapes a nursery in an exception group, even a single error; code that
answers a client or prints one line wants the error that caused it. :func:`open_nursery`
gives that error (the most telling leaf when several tasks failed at once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

TELLING = (KeyboardInterrupt, OSError, ValueError)
"""Leaves preferred, in this order, when a group holds several: what the user can act on."""


def first_failure(
    group: BaseExceptionGroup[BaseException], prefer: tuple[type[BaseException], ...] = ()
) -> BaseException:
    """The leaf of ``group`` that stands for it: the first of a ``prefer`` type, else of a
    :data:`TELLING` type, else the first that is not a cancellation."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        else:
            leaves.append(e)

    walk(group)
    for kind in (*prefer, *TELLING):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    real = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    return (real or leaves)[0]


@asynccontextmanager
async def open_nursery(
    prefer: tuple[type[BaseException], ...] = (),
) -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure is raised as the one leaf that stands for it
    (:func:`first_failure`), not as an exception group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise first_failure(group, prefer) from None
