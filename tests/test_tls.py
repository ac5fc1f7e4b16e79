"""``xfer serve --tls-cert --tls-key``: HTTPS for the CLI, the XenAPI SDK and curl, on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.http.tls import TlsError, server_ssl_context
from support import XFER, make_dynamic
from test_cli_rpc import ok, one_error_line, xfer
from test_serve import ROOT, serving, stop

PASSWORD = "secret"
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")


class TlsDaemon:
    def __init__(self, port: int, cert: Path, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.cert = cert
        self.proc = proc


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for ``::1`` and ``127.0.0.1`` (IP SANs) and its key."""
    if OPENSSL is None:
        pytest.skip("no openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=xfer-test",
            "-addext",
            "subjectAltName=IP:::1,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[TlsDaemon]:
    cert, key = certificate
    tmp = tmp_path_factory.mktemp("tls-daemon")
    args = ("--listen", "[::]:0", "--password", PASSWORD, "--tls-cert", str(cert))
    with serving(tmp, *args, "--tls-key", str(key)) as (proc, urls, err):
        match = re.fullmatch(r"https://\[::\]:(\d+)/", urls[0])
        assert match, urls
        yield TlsDaemon(int(match.group(1)), cert, proc)
        assert stop(proc) == 0
        assert "Traceback" not in err.read_text()


def cli_host(daemon: TlsDaemon, address: str = "[::1]") -> tuple[str, ...]:
    return ("--host", f"https://{address}:{daemon.port}/", "--password", PASSWORD)


def test_cli_with_ca(daemon: TlsDaemon) -> None:
    for address in ("[::1]", "127.0.0.1"):
        out = ok("host", "info", *cli_host(daemon, address), "--ca", str(daemon.cert))
        assert re.search(r"^uuid: +[0-9a-f-]{36}$", out, re.M), out
    uuid = ok("vdi", "create", *cli_host(daemon), "--ca", str(daemon.cert), "--size", "1M").strip()
    assert ok("vdi", "destroy", *cli_host(daemon), "--ca", str(daemon.cert), "--vdi", uuid) == ""


def test_cli_verifies_the_certificate(daemon: TlsDaemon) -> None:
    error = one_error_line(xfer("host", "info", *cli_host(daemon)))
    assert "CERTIFICATE_VERIFY_FAILED" in error, error
    assert ok("host", "info", *cli_host(daemon), "--insecure").startswith("name:")


def test_xenapi_sdk_verifies_over_https(daemon: TlsDaemon) -> None:
    script = (
        "import sys, XenAPI\n"
        "s = XenAPI.Session(sys.argv[1], ignore_ssl=False)\n"
        "s.xenapi.login_with_password('root', sys.argv[2], '2.21', 'test')\n"
        "try:\n"
        "    (host,) = s.xenapi.host.get_all()\n"
        "    print(s.xenapi.host.get_record(host)['uuid'])\n"
        "finally:\n"
        "    s.xenapi.session.logout()\n"
    )
    url = f"https://[::1]:{daemon.port}/"
    env = {**os.environ, "SSL_CERT_FILE": str(daemon.cert)}

    def sdk() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, url, PASSWORD],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    proc = sdk()
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", proc.stdout), proc.stdout
    # without the certificate trusted, the SDK refuses the host
    env.pop("SSL_CERT_FILE")
    env["SSL_CERT_DIR"] = str(daemon.cert.parent / "nothing")
    proc = sdk()
    assert proc.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in proc.stderr


@pytest.mark.skipif(CURL is None, reason="no curl command")
def test_curl_gets_an_http_answer(daemon: TlsDaemon) -> None:
    assert CURL is not None
    for address in ("[::1]", "127.0.0.1"):
        proc = subprocess.run(
            [
                *(CURL, "-gsS", "-m", "10", "--cacert", str(daemon.cert), "-o", "/dev/null"),
                *("-w", "%{http_code} %{scheme}", f"https://{address}:{daemon.port}/"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert re.fullmatch(r"[1-5]\d\d HTTPS", proc.stdout), proc.stdout


def _curl(daemon: TlsDaemon, *args: str) -> str:
    """curl's ``-w`` output; the run must succeed."""
    assert CURL is not None
    argv = [CURL, "-gsS", "-m", "60", "--cacert", str(daemon.cert), "-u", f"root:{PASSWORD}"]
    proc = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(CURL is None, reason="no curl command")
def test_curl_uploads_over_tls(daemon: TlsDaemon, tmp_path: Path) -> None:
    """Bodies of several MiB (many TLS records, read several at a time) by Content-Length
    and chunked, over both families, land whole: the export hashes like the source."""
    size = 8 << 20
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(size - 4096) + bytes(4096))
    ca = ("--ca", str(daemon.cert))
    vdi = ok("vdi", "create", *cli_host(daemon), *ca, "--size", str(size)).strip()
    for address, chunked in (("[::1]", False), ("127.0.0.1", True)):
        url = f"https://{address}:{daemon.port}/import_raw_vdi?vdi={vdi}&format=raw"
        framing = ("-H", "Transfer-Encoding: chunked") if chunked else ()
        answer = _curl(daemon, "-T", str(source), *framing, "-w", " %{http_code}", url)
        assert answer.split() == [f"OpaqueRef:{vdi}", "200"], answer
        back = tmp_path / f"back{chunked}.raw"
        url = f"https://{address}:{daemon.port}/export_raw_vdi?vdi={vdi}&format=raw"
        assert _curl(daemon, "-o", str(back), "-w", "%{http_code}", url) == "200"
        assert (
            hashlib.sha256(back.read_bytes()).digest()
            == hashlib.sha256(source.read_bytes()).digest()
        )
        back.unlink()
        source.write_bytes(source.read_bytes()[::-1])  # other content for the next round


@contextlib.contextmanager
def _tls_put(daemon: TlsDaemon, target: str, length: int) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the daemon on ::1 (its certificate verified) that has sent the
    head of ``PUT target`` with Basic credentials, announcing ``length`` body bytes."""
    context = ssl.create_default_context(cafile=str(daemon.cert))
    basic = base64.b64encode(f"root:{PASSWORD}".encode()).decode()
    head = (
        f"PUT {target} HTTP/1.1\r\nHost: xfer\r\n"
        f"Authorization: Basic {basic}\r\nContent-Length: {length}\r\n\r\n"
    )
    with (
        socket.create_connection(("::1", daemon.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="::1") as tls,
    ):
        tls.sendall(head.encode())
        yield tls


def test_cut_tls_upload_leaves_the_vdi(daemon: TlsDaemon, tmp_path: Path) -> None:
    """A client that sends 3 of the 8 MiB it announced over TLS, then closes its socket
    (no close_notify): the VDI keeps its content."""
    ca = ("--ca", str(daemon.cert))
    vdi = ok("vdi", "create", *cli_host(daemon), *ca, "--size", "8M").strip()
    with _tls_put(daemon, f"/import_raw_vdi?vdi={vdi}", 8 << 20) as tls:
        tls.sendall(os.urandom(3 << 20))
    exported = tmp_path / "after.raw"
    url = f"https://[::1]:{daemon.port}/export_raw_vdi?vdi={vdi}&format=raw"
    assert _curl(daemon, "-o", str(exported), "-w", "%{http_code}", url) == "200"
    assert exported.read_bytes() == bytes(8 << 20)
    assert daemon.proc.poll() is None


def test_early_answer_reaches_a_client_still_sending(daemon: TlsDaemon, tmp_path: Path) -> None:
    """A malformed VHD is answered 400 after its first MiBs while the client, which reads
    only once it has sent everything, still sends 24 MiB more: the server reads and drops
    them for a while before closing, so that the client reads the 400, not a reset."""
    ca = ("--ca", str(daemon.cert))
    vdi = ok("vdi", "create", *cli_host(daemon), *ca, "--size", "32M").strip()
    image = tmp_path / "bad.vhd"
    make_dynamic(image, 32 << 20, [(0, os.urandom(28 << 20))])
    body = bytearray(image.read_bytes())
    body[512:520] = b"notspars"  # the dynamic header's cookie
    with _tls_put(daemon, f"/import_raw_vdi?vdi={vdi}&format=vhd", len(body)) as tls:
        tls.sendall(body)
        answer = b""
        while b"offset" not in answer and (data := tls.recv(4096)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"offset 512" in answer, answer


def _plain_http(port: int) -> bytes:
    """What a plain-HTTP request to the TLS port gets before the connection ends."""
    with socket.create_connection(("::1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: xfer\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return data


def test_plain_http_to_the_tls_port_fails_cleanly(daemon: TlsDaemon) -> None:
    for _ in range(3):
        assert not _plain_http(daemon.port).startswith(b"HTTP/"), "answered in clear text"
    assert daemon.proc.poll() is None
    assert ok("host", "info", *cli_host(daemon), "--ca", str(daemon.cert)).startswith("name:")


def test_stalled_handshake_does_not_block_others(daemon: TlsDaemon) -> None:
    with socket.create_connection(("::1", daemon.port), timeout=10):
        assert ok("vdi", "list", *cli_host(daemon), "--ca", str(daemon.cert)).startswith("UUID")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_old_tls_versions_are_refused(daemon: TlsDaemon) -> None:
    context = ssl.create_default_context(cafile=str(daemon.cert))
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot offer TLS 1.1")
    with (
        socket.create_connection(("::1", daemon.port), timeout=10) as sock,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(sock, server_hostname="::1")
    good = ssl.create_default_context(cafile=str(daemon.cert))
    with (
        socket.create_connection(("::1", daemon.port), timeout=10) as sock,
        good.wrap_socket(sock, server_hostname="::1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


# Errors


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*XFER, "serve", "--state-dir", str(tmp_path / "state"), "--listen", "[::1]:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "XFER_PASSWORD"},
        check=False,
    )


def test_cert_without_key_is_one_error_line(tmp_path: Path) -> None:
    proc = _serve(tmp_path, "--tls-cert", str(tmp_path / "cert.pem"))
    assert "--tls-cert and --tls-key go together" in one_error_line(proc)
    assert not (tmp_path / "state").exists()


def test_unusable_certificate_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    proc = _serve(tmp_path, "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", "nokey.pem")
    assert "TLS" in one_error_line(proc)
    assert not (tmp_path / "state").exists()


def test_mismatched_key_is_refused(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    (tmp_path / "other").mkdir()
    _, other_key = make_certificate(tmp_path / "other")
    with pytest.raises(TlsError, match="cannot use TLS certificate"):
        server_ssl_context(str(certificate[0]), str(other_key))
    assert server_ssl_context(*map(str, certificate)).minimum_version == ssl.TLSVersion.TLSv1_2


def test_listening_lines_show_https(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    args = ("--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--password", PASSWORD)
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with serving(tmp_path, *args, *tls, count=2) as (proc, urls, _):
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+/", urls[0]), urls
        assert re.fullmatch(r"https://\[::1\]:\d+/", urls[1]), urls
        assert stop(proc) == 0
