"""Progress bars on stderr, drawn only on a terminal: a transfer's bytes, rate and ETA, and a
task's fraction done with a note of what it is doing."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, initial: int, quiet: bool) -> Any:
    """A tqdm bar on stderr counting bytes from ``initial`` to ``total`` (None: unknown),
    disabled with ``quiet`` or when stderr is not a terminal. Used as a context manager."""
    return tqdm(
        total=total,
        initial=initial,
        unit="iB",  # with unit_divisor 1024: "12.0M/24.0M [..., 216MiB/s]"
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=True,
    )


def task_bar(description: str, quiet: bool) -> Any:
    """A tqdm bar on stderr of a task's progress in percent (``bar.n`` set from the task's
    0..1 progress), its note after the bar (``bar.set_postfix_str``); disabled like
    :func:`progress_bar`. Used as a context manager."""
    return tqdm(
        total=100,
        desc=description,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",  # ", " + the note
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        leave=True,
    )
