"""The progress bar of a transfer: bytes, rate and ETA on stderr, drawn only on a terminal."""

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
