"""What the server allows a client: :class:`Limits`, so that slow, idle, numerous or oversized
clients can neither hold the daemon's descriptors and memory nor stop it serving others."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Limits of the server; sizes in bytes, timeouts in seconds, rates in bytes per second."""

    max_head: int = 16 * 1024
    """Largest request head (h11's ``max_incomplete_event_size``); a larger one gets 431."""
    header_timeout: float = 10.0
    """Time to receive a complete request head, counted from the connection for the first
    request and from the head's first byte for later ones; also the TLS handshake's."""
    idle_timeout: float = 60.0
    """Time a kept-alive connection waits for the first byte of the next request."""
    body_timeout: float = 30.0
    """How long reading a request body may wait for the client: at first, and at most ever
    ahead (Apache mod_reqtimeout's ``body=N``); 408 once it has waited that long."""
    min_body_rate: float = 500.0
    """Each this many body bytes received earn one more second of :attr:`body_timeout`
    (mod_reqtimeout's ``MinRate``, the same default), so that a body trickling in is cut too;
    0 lets every byte restore the whole timeout."""
    max_body: int = 1 << 20
    """Default bound of :meth:`~migrate.http.exchange.Connection.read_body`."""
    body_memory: int = 64 << 20
    """Bytes of request bodies read whole (``read_body``) that all connections together may
    hold; a body waits for room, then gets 503."""
    body_memory_wait: float = 5.0
    """How long a body read whole waits for room in :attr:`body_memory` before its 503."""
    max_connections: int = 2048
    """Connections served at once; one more is refused at once (503 and closed)."""
    max_client_connections: int = 256
    """Connections served at once for one client address; one more is refused at once."""
