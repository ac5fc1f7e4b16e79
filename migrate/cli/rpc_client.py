"""A XenAPI session for the command line: JSON-RPC to a host's ``/jsonrpc`` over the CLI's
HTTP client (:mod:`migrate.cli.http_client`).

Every failure is a :class:`~migrate.cli.http_client.ClientError` whose text is one line; a
XenAPI failure reads ``CODE: param param``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from migrate.cli.http_client import ClientError, Target, failure, http_errors
from migrate.formats.xapi import JSONRPC_PATH

ORIGINATOR = "xfer-cli"
"""Who logs in, as the host records it."""


class ApiFailure(ClientError):
    """A XenAPI failure: the error ``code`` and its ``params``."""

    def __init__(self, code: str, params: list[Any]) -> None:
        self.code = code
        self.params = params
        text = " ".join(str(p) for p in params)
        super().__init__(f"{code}: {text}" if text else code)


class Session:
    """JSON-RPC calls to ``url`` through ``client``; :meth:`call` once logged in."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.url = url
        self.ref: str | None = None
        self._client = client
        self._next_id = 0

    async def request(self, method: str, *params: Any) -> Any:
        """The result of one JSON-RPC call (no session added); ClientError on any failure."""
        self._next_id += 1
        body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": self._next_id}
        async with http_errors(self.url):
            response = await self._client.post(self.url, json=body)
        if response.status_code != 200:
            raise failure(response)
        try:
            answer = response.json()
        except (ValueError, UnicodeDecodeError):
            raise ClientError(f"{self.url}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise ClientError(f"{self.url}: the answer is not a JSON-RPC response")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ClientError(f"{self.url}: malformed JSON-RPC error {error!r}")
            data = error.get("data")
            params_ = data if isinstance(data, list) else [] if data is None else [data]
            raise ApiFailure(str(error.get("message", "UNKNOWN_ERROR")), params_)
        if "result" not in answer:
            raise ClientError(f"{self.url}: JSON-RPC response without a result")
        return answer["result"]

    async def login(self, user: str, password: str) -> None:
        """``session.login_with_password``."""
        self.ref = await self.request("session.login_with_password", user, password, "", ORIGINATOR)

    async def call(self, method: str, *params: Any) -> Any:
        """``method(session, *params)``."""
        if self.ref is None:
            raise ClientError("not logged in")
        return await self.request(method, self.ref, *params)

    async def logout(self) -> None:
        """``session.logout``, best effort: the session is forgotten either way."""
        ref, self.ref = self.ref, None
        if ref is not None:
            with contextlib.suppress(ClientError):
                await self.request("session.logout", ref)


@contextlib.asynccontextmanager
async def open_session(client: httpx.AsyncClient, target: Target) -> AsyncIterator[Session]:
    """A session on ``target``'s host logged in with its credentials, logged out at the end."""
    session = Session(client, target.host.url(JSONRPC_PATH))
    await session.login(target.user, target.password)
    try:
        yield session
    finally:
        await session.logout()
