"""``xfer host info`` and ``xfer vdi list|create|destroy`` against a real ``xfer serve``."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.cli.http_client import host_of
from migrate.formats.xapi import JSONRPC_PATH
from support import XFER, TimeoutTransport, xfer_env
from test_serve import ROOT, serving, stop

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PASSWORD = "secret"


class Daemon:
    """A running ``xfer serve --listen [::]:0``: its port and state directory."""

    def __init__(self, port: int, state: Path, extra_sr: Path) -> None:
        self.port = port
        self.state = state
        self.extra_sr = extra_sr

    @property
    def sr_dir(self) -> Path:
        return self.state / "sr"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("daemon")
    extra = tmp / "extra-sr"
    args = ("--listen", "[::]:0", "--password", PASSWORD, "--sr", str(extra))
    with serving(tmp, *args) as (proc, urls, _):
        match = re.fullmatch(r"http://\[::\]:(\d+)/", urls[0])
        assert match, urls
        yield Daemon(int(match.group(1)), tmp / "state", extra)
        assert stop(proc) == 0


def xfer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``xfer ARGS`` in a subprocess (at most 60 s)."""
    return subprocess.run(
        [*XFER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env or xfer_env(),
        check=False,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    """The stdout of a successful ``xfer ARGS``."""
    proc = xfer(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``xfer: error:`` line of a failed run, without the prefix."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("xfer: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr.removeprefix("xfer: error: ").rstrip("\n")


def auth(daemon: Daemon, host: str | None = None) -> tuple[str, ...]:
    return ("--host", host or f"[::1]:{daemon.port}", "--password", PASSWORD)


# Host text


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("192.0.2.1", "http://192.0.2.1:8080/jsonrpc"),
        ("192.0.2.1:9000", "http://192.0.2.1:9000/jsonrpc"),
        ("2001:db8::1", "http://[2001:db8::1]:8080/jsonrpc"),
        ("[2001:db8::1]:8443", "http://[2001:db8::1]:8443/jsonrpc"),
        ("fe80::1%eth0", "http://[fe80::1%25eth0]:8080/jsonrpc"),
        ("[fe80::1%25eth0]:80", "http://[fe80::1%25eth0]/jsonrpc"),
        ("::ffff:192.0.2.1", "http://192.0.2.1:8080/jsonrpc"),
        ("Xen1.Example.", "http://xen1.example:8080/jsonrpc"),
        ("https://xen1.example/", "https://xen1.example/jsonrpc"),
        ("https://[2001:db8::1]:8443/x", "https://[2001:db8::1]:8443/jsonrpc"),
        ("http://[2001:db8::1]", "http://[2001:db8::1]/jsonrpc"),
    ],
)
def test_endpoint(text: str, url: str) -> None:
    assert host_of(text).url(JSONRPC_PATH) == url


# Against a daemon


@pytest.mark.parametrize(
    "form",
    ["[::1]:{port}", "http://[::1]:{port}/", "127.0.0.1:{port}", "[::ffff:127.0.0.1]:{port}"],
)
def test_host_info(daemon: Daemon, form: str) -> None:
    out = ok("host", "info", *auth(daemon, form.format(port=daemon.port)))
    fields = dict(re.findall(r"^([a-z ]+): +(.*)$", out, re.M))
    assert fields["name"] == socket.gethostname(), out
    assert UUID.fullmatch(fields["uuid"]), out
    assert fields["address"], out
    assert fields["primary address type"] == "IPv6", out
    assert re.search(r"^  lo  .*IPv4 127\.0\.0\.1/255\.0\.0\.0", out, re.M), out


@pytest.mark.slow
def test_vdi_create_list_destroy(daemon: Daemon) -> None:
    uuid = ok("vdi", "create", *auth(daemon), "--size", "10M", "--name", "disk one").strip()
    assert UUID.fullmatch(uuid), uuid
    assert (daemon.sr_dir / f"{uuid}.vhd").is_file()

    text = ok("vdi", "list", *auth(daemon, f"http://[::1]:{daemon.port}/"))
    header, *lines = text.splitlines()
    assert header.split() == ["UUID", "NAME", "SIZE", "SR"]
    (line,) = [line for line in lines if line.startswith(uuid)]
    assert re.fullmatch(rf"{uuid}  disk one +10\.0 MiB  {UUID.pattern}", line), line

    rows = json.loads(ok("vdi", "list", *auth(daemon, f"127.0.0.1:{daemon.port}"), "--json"))
    (row,) = [row for row in rows if row["uuid"] == uuid]
    assert row["name_label"] == "disk one" and row["virtual_size"] == 10 << 20
    assert UUID.fullmatch(row["SR"])

    other = ok("vdi", "create", *auth(daemon), "--size", "1M", "--sr", row["SR"]).strip()
    assert (daemon.sr_dir / f"{other}.vhd").is_file()

    assert ok("vdi", "destroy", *auth(daemon), "--vdi", uuid) == ""
    assert not (daemon.sr_dir / f"{uuid}.vhd").exists()
    assert ok("vdi", "destroy", *auth(daemon), "--vdi", other) == ""
    rows = json.loads(ok("vdi", "list", *auth(daemon), "--json"))
    assert not {uuid, other} & {row["uuid"] for row in rows}

    error = one_error_line(xfer("vdi", "destroy", *auth(daemon), "--vdi", uuid))
    assert error == f"UUID_INVALID: VDI {uuid}"


def sr_uuids(daemon: Daemon) -> dict[str, str]:
    """SR uuid by path, over XML-RPC."""
    proxy = xmlrpc.client.ServerProxy(f"http://[::1]:{daemon.port}/", transport=TimeoutTransport())
    session = proxy.session.login_with_password("root", PASSWORD, "1.0", "test")["Value"]
    try:
        records = proxy.SR.get_all_records(session)["Value"]
    finally:
        proxy.session.logout(session)
    return {record["name_label"]: record["uuid"] for record in records.values()}


@pytest.mark.slow
def test_vdi_create_in_another_sr(daemon: Daemon) -> None:
    srs = sr_uuids(daemon)
    assert len(srs) == 2, srs
    (extra,) = [uuid for name, uuid in srs.items() if name != "Local storage"]
    uuid = ok("vdi", "create", *auth(daemon), "--size", "2M", "--sr", extra).strip()
    assert (daemon.extra_sr / f"{uuid}.vhd").is_file()
    rows = json.loads(ok("vdi", "list", *auth(daemon), "--json"))
    assert {"uuid": uuid, "SR": extra} in [{k: r[k] for k in ("uuid", "SR")} for r in rows]
    assert ok("vdi", "destroy", *auth(daemon), "--vdi", uuid) == ""
    assert not (daemon.extra_sr / f"{uuid}.vhd").exists()


def test_unknown_sr_is_one_error_line(daemon: Daemon) -> None:
    proc = xfer("vdi", "create", *auth(daemon), "--size", "1M", "--sr", "no-such-sr")
    assert one_error_line(proc) == "UUID_INVALID: SR no-such-sr"


def test_wrong_password_is_one_error_line(daemon: Daemon) -> None:
    proc = xfer("host", "info", "--host", f"[::1]:{daemon.port}", "--password", "wrong")
    assert one_error_line(proc).startswith("SESSION_AUTHENTICATION_FAILED: root ")


@pytest.mark.slow
def test_credentials_from_environment(daemon: Daemon) -> None:
    host = ("--host", f"[::1]:{daemon.port}")
    out = ok("vdi", "list", *host, env=xfer_env(XFER_USER="root", XFER_PASSWORD=PASSWORD))
    assert out.startswith("UUID")
    proc = xfer("vdi", "list", *host, env=xfer_env(XFER_USER="nobody", XFER_PASSWORD=PASSWORD))
    assert one_error_line(proc).startswith("SESSION_AUTHENTICATION_FAILED: nobody ")
    # the options win over the environment
    env = xfer_env(XFER_USER="nobody", XFER_PASSWORD="wrong")
    assert ok("vdi", "list", *host, "--user", "root", "--password", PASSWORD, env=env)
    assert "no password" in one_error_line(xfer("vdi", "list", *host))


def test_connection_refused_is_one_error_line() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        proc = xfer("host", "info", "--host", f"[::1]:{port}", "--password", "x")
    error = one_error_line(proc)
    assert error.startswith(f"cannot reach http://[::1]:{port}/jsonrpc: "), error


@pytest.mark.parametrize("text", ["[::1", "fe80::1", "http://::1/", "ftp://[::1]/"])
def test_bad_host_is_one_error_line(text: str) -> None:
    one_error_line(xfer("host", "info", "--host", text, "--password", "x"))


@pytest.mark.parametrize(
    ("name", "text"), [("missing.pem", "No such file or directory"), ("empty.pem", "no PEM")]
)
def test_unusable_ca_file_is_one_error_line(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / "empty.pem").write_text("")
    ca = str(tmp_path / name)
    proc = xfer("host", "info", "--host", "https://[::1]:9/", "--password", "x", "--ca", ca)
    error = one_error_line(proc)
    assert error.startswith(f"--ca {ca}: {text}"), error


def test_https_without_a_trusted_certificate_fails(daemon: Daemon) -> None:
    # a plain HTTP daemon asked for TLS: one line, no traceback
    proc = xfer("host", "info", *auth(daemon, f"https://[::1]:{daemon.port}/"), "--timeout", "10")
    assert one_error_line(proc).startswith(f"cannot reach https://[::1]:{daemon.port}/jsonrpc: ")
