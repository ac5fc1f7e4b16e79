"""The tests' cutting relay (support.CuttingProxy): cuts after N bytes either way, on the one
connection asked."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from support import CuttingProxy


@contextmanager
def sink() -> Iterator[tuple[int, list[bytes]]]:
    """A server on ::1 that answers b"hello" to each connection and records what each sent."""
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    received: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"hello")
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` through the relay, then read what comes back until the end."""
    with socket.create_connection(("::1", port), timeout=10) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_cut_request_after_n_bytes_on_one_connection() -> None:
    with sink() as (port, received), CuttingProxy(port, cut_request=3, only=1) as proxy:
        assert exchange(proxy.port, b"abcdef") == b"hello"  # connection 0: untouched
        exchange(proxy.port, b"abcdef")
        proxy_connections = len(proxy.connections)
    assert proxy_connections == 2
    assert received == [b"abcdef", b"abc"]


def test_cut_response_after_n_bytes() -> None:
    with sink() as (port, _), CuttingProxy(port, cut=2) as proxy:
        assert exchange(proxy.port, b"x") == b"he"
