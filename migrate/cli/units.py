"""Sizes as people type and read them: plain bytes or K/M/G/T suffixes, powers of 1024."""

from __future__ import annotations

import re

_SUFFIXES = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE = re.compile(r"(\d+)\s*(?:([KMGT])(?:i?B)?|B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"`` -> 10737418240. Whole numbers with an optional K, M, G or T (``KiB``, ``KB``
    and a bare ``B`` are accepted too); raises ValueError naming the input."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid size {text!r}: expected bytes or a number with K, M, G or T")
    return int(m.group(1)) << _SUFFIXES[(m.group(2) or "").upper()]


def format_size(n: float) -> str:
    """``2147483648`` -> ``"2.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
