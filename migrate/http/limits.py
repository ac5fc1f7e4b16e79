"""What the server allows a client: :class:`Limits`, so that a slow, idle or oversized
request cannot hold a connection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Limits of the server; sizes in bytes, timeouts in seconds."""

    max_head: int = 16 * 1024
    """Largest request head (h11's ``max_incomplete_event_size``); a larger one gets 431."""
    header_timeout: float = 10.0
    """Time to receive a complete request head, counted from the connection for the first
    request and from the head's first byte for later ones; also the TLS handshake's."""
    idle_timeout: float = 60.0
    """Time a kept-alive connection waits for the first byte of the next request."""
    body_timeout: float = 30.0
    """Longest wait for the next body bytes while a body is being read (408)."""
    max_body: int = 1 << 20
    """Default bound of :meth:`~migrate.http.exchange.Connection.read_body`."""
