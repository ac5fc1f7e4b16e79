"""The CLI against ``xfer serve`` on a zoned link-local address: ``fe80::1`` on the loopback
of a network namespace of the test's own, reached as ``fe80::1%lo`` in every host form, over
HTTP and HTTPS (a certificate for the bare address). Needs root and ``ip netns``."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import (
    PASSWORD,
    ROOT,
    UUID,
    XFER,
    ip,
    network_namespace,
    one_error_line,
    pattern,
    xfer_env,
)
from test_serve import serving, stop

pytestmark = [pytest.mark.root, pytest.mark.slow]

ADDRESS = "fe80::1"
"""The link-local address the namespace's loopback gets."""
HTTP_PORT = 8080
"""The daemon's port over HTTP: ``xfer serve``'s own, so host text without a port reaches it."""
HTTPS_PORT = 8443


@dataclass
class Namespace:
    """A network namespace whose loopback holds :data:`ADDRESS`, and the HTTPS daemon's
    certificate."""

    name: str
    cert: Path

    def run(self, *command: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``command`` inside the namespace (at most 60 s)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            input=input,
            capture_output=True,
            timeout=60,
            cwd=ROOT,
            env=xfer_env(),
            check=False,
        )

    def xfer(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``xfer ARGS`` inside the namespace."""
        return self.run(*XFER, *args, input=input)

    def ok(self, *args: str, input: bytes | None = None) -> str:
        """The stdout of a successful ``xfer ARGS`` inside the namespace."""
        proc = self.xfer(*args, input=input)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
        return proc.stdout.decode()


def certificate_for(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``address`` (an IP SAN) and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=xfer-test"]
    command += ["-addext", f"subjectAltName=IP:{address}", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@contextmanager
def daemon_in(namespace: str, tmp: Path, *args: str) -> Iterator[str]:
    """``xfer serve ARGS`` inside ``namespace``: the URL it listens on; stopped afterwards,
    checked to exit 0."""
    tmp.mkdir()
    with serving(tmp, "--password", PASSWORD, *args, netns=namespace) as (proc, (url,), _):
        yield url
        assert stop(proc) == 0


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    """The namespace with a daemon on ``[fe80::1%lo]:8080`` and one on ``:8443`` over TLS."""
    with network_namespace("xfer-cli") as name:
        tmp = tmp_path_factory.mktemp("link-local")
        ip("-n", name, "address", "add", f"{ADDRESS}/64", "dev", "lo", "nodad")
        cert, key = certificate_for(tmp, ADDRESS)
        tls = ("--tls-cert", str(cert), "--tls-key", str(key))
        with (
            daemon_in(name, tmp / "plain", "--listen", f"[{ADDRESS}%lo]:{HTTP_PORT}") as plain,
            daemon_in(name, tmp / "tls", "--listen", f"[{ADDRESS}%lo]:{HTTPS_PORT}", *tls) as https,
        ):
            assert plain == f"http://[{ADDRESS}%25lo]:{HTTP_PORT}/", plain
            assert https == f"https://[{ADDRESS}%25lo]:{HTTPS_PORT}/", https
            yield Namespace(name, cert)


@pytest.mark.parametrize(
    "host",
    [
        f"{ADDRESS}%lo",
        f"[{ADDRESS}%lo]",
        f"[{ADDRESS}%lo]:{HTTP_PORT}",
        f"[{ADDRESS}%25lo]:{HTTP_PORT}",
        f"http://[{ADDRESS}%25lo]:{HTTP_PORT}/",
    ],
)
def test_every_host_form_reaches_the_zoned_address(namespace: Namespace, host: str) -> None:
    out = namespace.ok("host", "info", "--host", host, "--password", PASSWORD)
    assert re.search(rf"^uuid: +{UUID.pattern}$", out, re.M), out


def test_transfers_through_the_zoned_address(namespace: Namespace) -> None:
    auth = ("--host", f"{ADDRESS}%lo", "--password", PASSWORD)
    vdi = namespace.ok("vdi", "create", *auth, "--size", "4M").strip()
    data = pattern(3 << 20, 5)
    out = namespace.ok("import", *auth, "--vdi", vdi, "-", input=data)
    assert out.splitlines()[0] == f"vdi {vdi}", out
    proc = namespace.xfer("export", *auth, "--vdi", vdi)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == data + bytes(1 << 20)
    assert namespace.ok("vdi", "destroy", *auth, "--vdi", vdi) == ""


def test_https_checks_the_certificate_against_the_bare_address(namespace: Namespace) -> None:
    """The zone is local to this host: the certificate names ``fe80::1``, and the client
    checks it against that, not ``fe80::1%lo``."""
    host = ("--host", f"https://[{ADDRESS}%25lo]:{HTTPS_PORT}/", "--password", PASSWORD)
    ca = ("--ca", str(namespace.cert))
    assert namespace.ok("host", "info", *host, *ca).startswith("name:")
    vdi = namespace.ok("vdi", "create", *host, *ca, "--size", "1M").strip()
    data = pattern(1 << 20, 6)
    namespace.ok("import", *host, *ca, "--vdi", vdi, "--quiet", "-", input=data)
    proc = namespace.xfer("export", *host, *ca, "--vdi", vdi, "--quiet")
    assert proc.returncode == 0 and proc.stdout == data, proc.stderr.decode()

    error = one_error_line(namespace.xfer("host", "info", *host))
    assert "CERTIFICATE_VERIFY_FAILED" in error, error
    assert namespace.ok("host", "info", *host, "--insecure").startswith("name:")


def test_an_unknown_zone_is_one_error_line(namespace: Namespace) -> None:
    proc = namespace.xfer("host", "info", "--host", f"{ADDRESS}%nosuch0", "--password", "x")
    error = one_error_line(proc)
    assert error.startswith(f"cannot reach http://[{ADDRESS}%25nosuch0]:{HTTP_PORT}/jsonrpc: "), (
        error
    )
