"""Worker-thread capacity, bounded by kind so that no kind of work can take another's.

trio runs blocking calls in worker threads under one default limit (40): bulk I/O of a few
dozen slow uploads once took all of it, and every login, RPC call and export waited behind
them. Each kind has its own bound here; the state database has its own as well
(:class:`migrate.host.database.Database`, one thread at a time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio

BULK = 16
"""Threads moving disk data at once: reading, writing and syncing images."""
HASHING = max(1, (os.cpu_count() or 2) - 1)
"""Threads checking passwords at once: a hash is a tenth of a second of CPU work, and wrong
passwords must never take every core from the event loop."""
PARSING = 2
"""Threads decoding large request bodies at once (XML-RPC, JSON-RPC)."""


@dataclass
class Threads:
    """The limiters of one host's worker threads, by kind of work."""

    bulk: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(BULK))
    hashing: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(HASHING))
    parsing: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(PARSING))
