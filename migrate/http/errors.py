"""HTTP error answers: :class:`HTTPError`, which a handler (or the server) raises to answer a
status, and the one-line text body every error answer carries."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]
"""Response headers as handlers give them: (name, value) pairs, text or bytes."""
RETRY_AFTER = 1
"""Seconds a client is told to wait (``Retry-After``) when the server is too busy for it."""


class HTTPError(Exception):
    """Raised by a handler (or the body reader) to answer ``status`` with a one-line text."""

    def __init__(self, status: int, message: str | None = None, headers: HeaderPairs = ()) -> None:
        self.status = status
        self.message = message or phrase(status)
        self.headers = list(headers)
        super().__init__(f"{status} {self.message}")


def phrase(status: int) -> str:
    """The reason phrase of ``status`` (``""`` for a code HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_headers() -> list[tuple[str, str]]:
    """The headers of an error answer's text body."""
    return [("content-type", "text/plain; charset=utf-8")]


def error_body(status: int, message: str) -> bytes:
    """``<status> <phrase>: <message>`` on one line, whatever ``message`` holds."""
    line = " ".join(message.split())
    return f"{status} {phrase(status)}: {line}\n".encode()
