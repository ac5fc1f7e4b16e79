"""The HTTP client of the commands that talk to a host, set up from their options, and its
failures as one line.

Every such command (``xfer host``, ``xfer vdi``, ``xfer export``, ``xfer import``) takes the
host in any form :func:`migrate.addresses.parse_host` accepts (without a port, the port of
``xfer serve``; a URL without a port, its scheme's), credentials from ``--user``/``--password``
or ``$XFER_USER``/``$XFER_PASSWORD``, and TLS verification against the system's CAs,
``--ca FILE``, or none (``--insecure``). It runs in ``trio.run`` with an ``httpx.AsyncClient``
on :class:`migrate.cli.transport.Transport` (:func:`run_client`); a :class:`ClientError` ends
it as one line, ``xfer: error: ...``, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import trio

from migrate.addresses import Host, parse_host
from migrate.cli.transport import Transport
from migrate.formats.xapi import DEFAULT_PORT, DEFAULT_USER


class ClientError(Exception):
    """A request that could not be made or that failed; ``str()`` is one line."""


@dataclass(frozen=True)
class Target:
    """The host a command talks to, and how: credentials, TLS verification, timeout."""

    host: Host
    user: str
    password: str = field(repr=False)
    context: ssl.SSLContext
    timeout: float


def host_of(text: str) -> Host:
    """The host in ``text``; without a port (and not a URL), on ``xfer serve``'s port."""
    host = parse_host(text)
    if host.port is None and host.scheme is None:
        host = host.with_port(DEFAULT_PORT)
    return host


def ssl_context(ca: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client context (TLS 1.2 or later): the system CAs, or ``ca``'s, or no verification;
    ValueError naming ``ca`` if it cannot be read."""
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as e:
        raise ValueError(f"--ca {ca}: no PEM certificate in it ({e.reason})") from None
    except OSError as e:
        raise ValueError(f"--ca {ca}: {e.strerror}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def target_of(args: argparse.Namespace) -> Target:
    """The target of a command's options (``--host``, ``--user``, ``--password``, ``--ca``,
    ``--insecure``, ``--timeout``); ValueError naming what is wrong or missing."""
    host = host_of(args.host)
    user = args.user or os.environ.get("XFER_USER") or DEFAULT_USER
    password = args.password if args.password is not None else os.environ.get("XFER_PASSWORD")
    if password is None:
        raise ValueError("no password: give --password or set XFER_PASSWORD")
    return Target(host, user, password, ssl_context(args.ca, args.insecure), args.timeout)


@contextlib.asynccontextmanager
async def open_client(
    target: Target, *, basic_auth: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` for ``target`` (under trio). With ``basic_auth`` every
    request authenticates with HTTP Basic, as the transfers do: one request instead of a
    login, the transfer and a logout, no session left behind when the client is killed, and a
    wrong password fails before any byte moved (the host answers 401 from the request head)."""
    auth = httpx.BasicAuth(target.user, target.password) if basic_auth else None
    async with httpx.AsyncClient(
        transport=Transport(target.context), auth=auth, timeout=target.timeout, trust_env=False
    ) as client:
        yield client


def run_client(
    args: argparse.Namespace,
    work: Callable[[httpx.AsyncClient, Target], Awaitable[int]],
    *,
    basic_auth: bool = False,
) -> int:
    """``work(client, target)`` in ``trio.run`` with a client for the target of ``args``
    (:func:`target_of`, :func:`open_client`): its exit status, or 1 with its ClientError on
    one line."""
    target = target_of(args)

    async def main() -> int:
        async with open_client(target, basic_auth=basic_auth) as client:
            return await work(client, target)

    try:
        return trio.run(main)
    except ClientError as e:
        print(f"xfer: error: {e}", file=sys.stderr)
        return 1


def failure(response: httpx.Response) -> ClientError:
    """The host's one-line message for a failed answer (``404 Not Found: ...``), from the
    first bytes of its body if they were read."""
    status = response.status_code
    try:
        line = one_line(response.content[:4096].decode("utf-8", "replace"))
    except httpx.ResponseNotRead:
        line = ""
    if not line:
        return ClientError(f"{status} {response.reason_phrase}")
    if not line.startswith(str(status)):
        return ClientError(f"{status} {response.reason_phrase}: {line}")
    return ClientError(line)


@contextlib.asynccontextmanager
async def http_errors(url: str) -> AsyncIterator[None]:
    """httpx's failures as one-line ClientErrors naming ``url``."""
    try:
        yield
    except httpx.TimeoutException:
        raise ClientError(f"{url}: timed out") from None
    except (httpx.ConnectError, httpx.UnsupportedProtocol) as e:
        raise ClientError(f"cannot reach {url}: {reason(e)}") from None
    except httpx.HTTPError as e:
        raise ClientError(f"{url}: {reason(e)}") from None


def reason(error: BaseException) -> str:
    """The first non-empty message along ``error``'s causes, on one line: on trio a failed TLS
    handshake is an empty ConnectError caused by an empty BrokenResourceError caused by the
    ``ssl`` error that says what went wrong."""
    seen: BaseException | None = error
    while seen is not None:
        text = one_line(seen)
        if text:
            return text
        seen = seen.__cause__ or seen.__context__
    return type(error).__name__


def one_line(value: object) -> str:
    """``value``'s text on one line (runs of whitespace, newlines included, as one space)."""
    return " ".join(str(value).split())
