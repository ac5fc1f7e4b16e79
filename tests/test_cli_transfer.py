"""``xfer export`` and ``xfer import`` against a real ``xfer serve`` over ``[::1]`` and
``127.0.0.1``; where a fault or a look at the wire is needed, through a real TCP relay in front
of it (:class:`support.CuttingProxy`), which can cut a connection in the middle of a body."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import re
import socket
import subprocess
import urllib.parse
import uuid as uuidlib
from pathlib import Path

import pytest

from migrate.cli.import_client import PIECE
from migrate.cli.main import main
from support import (
    PASSWORD,
    ROOT,
    SECTOR,
    UUID,
    XFER,
    CuttingProxy,
    Daemon,
    MiB,
    disk_content,
    http_head,
    make_dynamic,
    one_error_line,
    pattern,
    read_all,
    with_tty_stderr,
    xfer_env,
    xfer_ok,
    xfer_run,
)
from test_serve import serving, stop
from test_tls import make_certificate

pytestmark = pytest.mark.slow  # about a second a test, each a few xfer processes

SHA_LINE = re.compile(r"sha256 ([0-9a-f]{64})  (.+)")

SIZE = 8 * MiB
WRITES = [(0, pattern(5000, 1)), (3 * MiB - 7, pattern(MiB + 99, 2)), (SIZE - 512, b"z" * 512)]
CONTENT = disk_content(SIZE, WRITES)
ADDRESSES = pytest.mark.parametrize("address", ["::1", "127.0.0.1"])

DISK = pattern(3 * PIECE + 25 * SECTOR, 7)
"""Longer than three pieces and not a multiple of one (whole sectors: a VDI's size)."""


def sha_of(out: str) -> tuple[str, str]:
    """The digest and file name of the ``sha256 HEX  FILE`` line (the last line)."""
    match = SHA_LINE.fullmatch(out.splitlines()[-1])
    assert match, out
    return match.group(1), match.group(2)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_file(daemon: Daemon, vdi: str, out: Path, *extra: str, address: str = "::1") -> bytes:
    """Export ``vdi`` to ``out``; its bytes, checked against the printed digest."""
    stdout = xfer_ok("export", *daemon.auth(address), "--vdi", vdi, "-o", str(out), *extra)
    data = out.read_bytes()
    assert sha_of(stdout) == (digest(data), str(out))
    assert not Path(f"{out}.part").exists()
    return data


def imported(stdout: str, source: str, data: bytes) -> str:
    """The uuid an import printed, its digest checked against ``data``."""
    first, second = stdout.splitlines()
    assert sha_of(second) == (digest(data), source)
    match = re.fullmatch(r"vdi (\S+)", first)
    assert match and UUID.fullmatch(match.group(1)), stdout
    return match.group(1)


def xfer_in_process(*args: str) -> int:
    """``xfer ARGS`` in this process (output through the test's capfd)."""
    return main(list(args))


def request_of(proxy: CuttingProxy) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """The method, path, query and header fields of the one request that went through
    ``proxy`` (read once the proxy is closed)."""
    (relayed,) = proxy.connections
    first, fields = http_head(relayed.request)
    method, target, _ = first.split(" ")
    url = urllib.parse.urlsplit(target)
    return method, url.path, dict(urllib.parse.parse_qsl(url.query)), fields


def response_of(proxy: CuttingProxy) -> tuple[int, dict[str, str]]:
    """The status and header fields of the one answer that went through ``proxy``."""
    (relayed,) = proxy.connections
    first, fields = http_head(relayed.response)
    return int(first.split(" ")[1]), fields


STRANGERS = (f"127.0.0.{n}" for n in itertools.count(20))
"""Loopback addresses no other test connects from: the daemon slows down a client's failed
logins after the first two, so each wrong password a test sends itself comes from one."""


def daemon_line(
    daemon: Daemon, method: str, target: str, password: str = PASSWORD, source: str = "::1"
) -> str:
    """The one-line body the daemon itself answers ``METHOD TARGET`` (as root, no body),
    asked from the loopback address ``source``."""
    token = base64.b64encode(f"root:{password}".encode()).decode()
    address = "::1" if ":" in source else "127.0.0.1"
    conn = http.client.HTTPConnection(address, daemon.port, timeout=30, source_address=(source, 0))
    try:
        headers = {"authorization": f"Basic {token}", "content-length": "0"}
        conn.request(method, target, headers=headers)
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert response.status >= 400 and body.count("\n") <= 1, (response.status, body)
    return body.strip()


@pytest.fixture(scope="module")
def disk(daemon: Daemon) -> str:
    """A VDI of the module's daemon holding :data:`DISK` (the tests only read it)."""
    vdi = daemon.create(len(DISK))
    out = xfer_ok("import", *daemon.auth(), "--vdi", vdi, "--quiet", "-", input=DISK)
    assert imported(out, "-", DISK) == vdi
    return vdi


# Exports


@ADDRESSES
def test_export_to_a_file(
    daemon: Daemon, disk: str, address: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "disk.raw"
    assert xfer_in_process("export", *daemon.auth(address), "--vdi", disk, "-o", str(out)) == 0
    captured = capfd.readouterr()
    assert captured.err == ""
    assert out.read_bytes() == DISK
    assert sha_of(captured.out) == (digest(DISK), str(out))
    assert not Path(f"{out}.part").exists()


def test_export_to_stdout_prints_the_digest_on_stderr(daemon: Daemon, disk: str) -> None:
    proc = xfer_run("export", *daemon.auth(), "--vdi", disk)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DISK
    assert proc.stderr.count(b"\n") == 1, proc.stderr
    assert sha_of(proc.stderr.decode()) == (digest(DISK), "-")


def test_export_of_a_sparse_disk_is_a_sparse_file(daemon: Daemon, tmp_path: Path) -> None:
    """All-zero stretches of a raw export become holes in the output file (its content and
    the printed sha256 are the whole disk's)."""
    size, data = 64 * MiB, pattern(MiB, 31)
    vdi = daemon.create(size)
    xfer_ok("import", *daemon.auth(), "--vdi", vdi, "--quiet", "-", input=data)
    out = tmp_path / "sparse.raw"
    printed = xfer_ok("export", *daemon.auth(), "--vdi", vdi, "--quiet", "-o", str(out))
    whole = data + bytes(size - len(data))
    assert out.read_bytes() == whole
    assert sha_of(printed) == (digest(whole), str(out))
    assert out.stat().st_blocks * 512 <= 2 * MiB  # the data, not the 63 MiB of zeros


def test_export_to_stdout_redirected_to_a_file_keeps_every_byte(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Standard output is written in full, zeros included, even when it is a regular file
    (holes are left only in the CLI's own output file, whose length it sets at the end)."""
    size, data = 8 * MiB, pattern(MiB, 32)
    vdi = daemon.create(size)
    xfer_ok("import", *daemon.auth(), "--vdi", vdi, "--quiet", "-", input=data)
    out = tmp_path / "stdout.raw"
    with out.open("wb") as stdout:
        proc = subprocess.run(
            [*XFER, "export", *daemon.auth(), "--vdi", vdi, "--quiet"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=xfer_env(),
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data + bytes(size - len(data))


def test_cut_export_keeps_the_part_and_resumes(daemon: Daemon, disk: str, tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    part = Path(f"{out}.part")
    cut = len(DISK) // 2  # the answer's head and about half its body
    with CuttingProxy(daemon.port, cut=cut) as proxy:
        error = one_error_line(xfer_run("export", *proxy.auth(), "--vdi", disk, "-o", str(out)))
    assert "the transfer was cut" in error and "--resume" in error, error
    assert response_of(proxy)[0] == 200
    assert not out.exists()
    # what arrived is a prefix of the disk (whole batches: a batch is written once complete)
    kept = part.read_bytes()
    assert 0 < len(kept) <= cut and DISK.startswith(kept)

    # the daemon survived the cut; --resume against it finishes the file
    stdout = xfer_ok("export", *daemon.auth(), "--vdi", disk, "-o", str(out), "--resume")
    assert out.read_bytes() == DISK
    assert sha_of(stdout) == (digest(DISK), str(out))
    assert not part.exists()

    # the same resume through a relay that does not cut: only the rest was asked for
    out.unlink()
    part.write_bytes(kept)
    with CuttingProxy(daemon.port, address="127.0.0.1") as proxy:
        stdout = xfer_ok("export", *proxy.auth(), "--vdi", disk, "-o", str(out), "--resume")
    assert request_of(proxy)[3]["range"] == f"bytes={len(kept)}-"
    status, fields = response_of(proxy)
    assert status == 206, fields
    assert fields["content-range"] == f"bytes {len(kept)}-{len(DISK) - 1}/{len(DISK)}"
    assert out.read_bytes() == DISK
    assert sha_of(stdout) == (digest(DISK), str(out))


def test_resume_of_a_complete_part_asks_for_nothing_more(
    daemon: Daemon, disk: str, tmp_path: Path
) -> None:
    out = tmp_path / "disk.raw"
    Path(f"{out}.part").write_bytes(DISK)
    with CuttingProxy(daemon.port) as proxy:
        stdout = xfer_ok("export", *proxy.auth(), "--vdi", disk, "-o", str(out), "--resume")
    assert request_of(proxy)[3]["range"] == f"bytes={len(DISK)}-"
    status, fields = response_of(proxy)
    assert status == 416 and fields["content-range"] == f"bytes */{len(DISK)}", fields
    assert out.read_bytes() == DISK
    assert sha_of(stdout) == (digest(DISK), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_resume_without_a_part_starts_from_zero(daemon: Daemon, disk: str, tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    with CuttingProxy(daemon.port) as proxy:
        stdout = xfer_ok("export", *proxy.auth(), "--vdi", disk, "-o", str(out), "--resume")
    assert "range" not in request_of(proxy)[3]
    assert response_of(proxy)[0] == 200
    assert out.read_bytes() == DISK
    assert sha_of(stdout) == (digest(DISK), str(out))


def test_cut_vhd_export_leaves_nothing(daemon: Daemon, disk: str, tmp_path: Path) -> None:
    out = tmp_path / "disk.vhd"
    with CuttingProxy(daemon.port, cut=len(DISK) // 2) as proxy:
        proc = xfer_run("export", *proxy.auth(), "--vdi", disk, "--format", "vhd", "-o", str(out))
    error = one_error_line(proc)
    assert "the transfer was cut" in error and "--resume" not in error, error
    method, path, query, _ = request_of(proxy)
    assert (method, path, query) == ("GET", "/export_raw_vdi", {"vdi": disk, "format": "vhd"})
    status, fields = response_of(proxy)
    assert status == 200 and int(fields["content-length"]) > len(DISK), fields
    assert list(tmp_path.iterdir()) == []


# Imports


@ADDRESSES
def test_import_a_file_with_its_length(daemon: Daemon, address: str, tmp_path: Path) -> None:
    vdi = daemon.create(len(DISK))
    source = tmp_path / "disk.raw"
    source.write_bytes(DISK)
    with CuttingProxy(daemon.port, address=address) as proxy:
        stdout = xfer_ok("import", *proxy.auth(), "--vdi", vdi, str(source))
    assert imported(stdout, str(source), DISK) == vdi
    method, path, query, fields = request_of(proxy)
    assert (method, path, query) == ("PUT", "/import_raw_vdi", {"vdi": vdi, "format": "raw"})
    assert fields["content-length"] == str(len(DISK)) and "transfer-encoding" not in fields
    assert response_of(proxy)[0] == 200
    assert export_file(daemon, vdi, tmp_path / "back.raw") == DISK


def test_import_stdin_is_chunked_into_a_new_vdi(daemon: Daemon, tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    make_dynamic(image, SIZE, WRITES)
    data = image.read_bytes()
    new = ("--sr", daemon.sr, "--name", "new disk", "--format", "vhd")
    with CuttingProxy(daemon.port) as proxy:
        stdout = xfer_ok("import", *proxy.auth(), *new, "-", input=data)
    created = imported(stdout, "-", data)
    method, path, query, fields = request_of(proxy)
    assert (method, path) == ("PUT", "/import_raw_vdi")
    assert query == {"sr_id": daemon.sr, "format": "vhd", "name_label": "new disk"}
    assert fields.get("transfer-encoding") == "chunked" and "content-length" not in fields
    row = daemon.vdis()[created]
    assert row["name_label"] == "new disk" and int(row["virtual_size"]) == SIZE, row
    assert export_file(daemon, created, tmp_path / "back.raw") == CONTENT


# Failures


def test_failed_resume_keeps_the_part(daemon: Daemon, disk: str, tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    part = Path(f"{out}.part")
    part.write_bytes(DISK[:1000])
    auth = daemon.auth(password="wrong")
    error = one_error_line(xfer_run("export", *auth, "--vdi", disk, "-o", str(out), "--resume"))
    assert error.startswith("401 "), error
    assert part.read_bytes() == DISK[:1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw.part"]


def test_password_from_the_environment(daemon: Daemon, disk: str, tmp_path: Path) -> None:
    host = ("--host", f"127.0.0.1:{daemon.port}")
    out = tmp_path / "o"
    env = xfer_env(XFER_PASSWORD=PASSWORD)
    proc = xfer_run("export", *host, "--vdi", disk, "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == DISK and sha_of(proc.stdout.decode())[0] == digest(DISK)
    assert "no password" in one_error_line(xfer_run("export", *host, "--vdi", disk))


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("export", "--vdi", "v", "--resume"), "--resume needs -o FILE"),
        (("export", "--vdi", "v", "-o", "f", "--resume", "--format", "vhd"), "raw exports only"),
        (("export", "--vdi", "v", "-o", "f", "--base", "b"), "--base needs --format vhd"),
        (("import", "--vdi", "v", "--name", "n", "f"), "--name needs --sr"),
        (("import", "--vdi", "v", "/no/such/file"), "No such file or directory: /no/such/file"),
    ],
)
def test_usage_errors_are_one_line(
    daemon: Daemon, tmp_path: Path, args: tuple[str, ...], text: str
) -> None:
    command, *rest = args
    proc = subprocess.run(
        [*XFER, command, *daemon.auth(), *rest],
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env=xfer_env(),
        check=False,
    )
    error = one_error_line(proc)
    assert text in error, error
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]  # bound, not listening
        host = ("--host", f"[::1]:{port}", "--password", "x")
        error = one_error_line(xfer_run("export", *host, "--vdi", "v", "-o", str(tmp_path / "o")))
        assert error.startswith(f"cannot reach http://[::1]:{port}/export_raw_vdi: "), error
        source = tmp_path / "in"
        source.write_bytes(b"x" * 512)
        error = one_error_line(xfer_run("import", *host, "--vdi", "v", str(source)))
        assert error.startswith(f"cannot reach http://[::1]:{port}/import_raw_vdi: "), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("text", ["[::1", "fe80::1", "ftp://[::1]/"])
def test_bad_host_is_one_line(text: str) -> None:
    one_error_line(xfer_run("export", "--host", text, "--password", "x", "--vdi", "v"))


# Progress


def test_progress_counts_the_whole_disk_and_its_rate(
    daemon: Daemon, disk: str, tmp_path: Path
) -> None:
    out = tmp_path / "disk.raw"
    status, stdout, tty = with_tty_stderr("export", *daemon.auth(), "--vdi", disk, "-o", str(out))
    assert status == 0, tty
    assert b"100%" in tty and b"24.0M/24.0M" in tty, tty
    assert re.search(rb"[KMG]?iB/s\]", tty), tty
    assert sha_of(stdout.decode())[0] == digest(DISK)
    assert out.read_bytes() == DISK


# Round trips


@ADDRESSES
def test_raw_file_round_trip(daemon: Daemon, address: str, tmp_path: Path) -> None:
    vdi = daemon.create()
    source = tmp_path / "disk.raw"
    source.write_bytes(CONTENT)
    out = xfer_ok("import", *daemon.auth(address), "--vdi", vdi, str(source))
    assert imported(out, str(source), CONTENT) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw", address=address) == CONTENT
    # and to stdout
    proc = xfer_run("export", *daemon.auth(address), "--vdi", vdi, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CONTENT
    assert sha_of(proc.stderr.decode()) == (digest(CONTENT), "-")


@ADDRESSES
def test_raw_stdin_chunked_into_a_new_vdi(daemon: Daemon, address: str, tmp_path: Path) -> None:
    data = CONTENT[: 3 * MiB + 3 * 512]
    out = xfer_ok(
        "import", *daemon.auth(address), "--sr", daemon.sr, "--name", "piped", "-", input=data
    )
    vdi = imported(out, "-", data)
    row = daemon.vdis()[vdi]
    assert row["name_label"] == "piped" and int(row["virtual_size"]) == len(data), row
    assert export_file(daemon, vdi, tmp_path / "back.raw") == data


@ADDRESSES
def test_raw_stdin_into_a_vdi(daemon: Daemon, address: str, tmp_path: Path) -> None:
    vdi = daemon.create()
    out = xfer_ok("import", *daemon.auth(address), "--vdi", vdi, "-", input=CONTENT)
    assert imported(out, "-", CONTENT) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw") == CONTENT


@ADDRESSES
def test_vhd_round_trips(daemon: Daemon, address: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    make_dynamic(image, SIZE, WRITES)
    vhd_bytes = image.read_bytes()
    vdi = daemon.create()
    out = xfer_ok("import", *daemon.auth(address), "--vdi", vdi, "--format", "vhd", str(image))
    assert imported(out, str(image), vhd_bytes) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw", address=address) == CONTENT

    exported = tmp_path / "back.vhd"
    export_file(daemon, vdi, exported, "--format", "vhd", address=address)
    assert read_all(exported) == CONTENT

    # the exported VHD into a new VDI, through stdin
    data = exported.read_bytes()
    out = xfer_ok(
        "import", *daemon.auth(address), "--sr", daemon.sr, "--format", "vhd", "-", input=data
    )
    new = imported(out, "-", data)
    assert new != vdi
    assert int(daemon.vdis()[new]["virtual_size"]) == SIZE
    assert export_file(daemon, new, tmp_path / "new.raw") == CONTENT


def test_resume_after_a_partial_file(daemon: Daemon, tmp_path: Path) -> None:
    vdi = daemon.create()
    source = tmp_path / "disk.raw"
    source.write_bytes(CONTENT)
    xfer_ok("import", *daemon.auth(), "--vdi", vdi, "--quiet", str(source))
    full = export_file(daemon, vdi, tmp_path / "full.raw")
    out = tmp_path / "resumed.raw"
    Path(f"{out}.part").write_bytes(full[: 3 * MiB + 1234])
    assert export_file(daemon, vdi, out, "--resume") == full == CONTENT
    # a part that already holds everything
    Path(f"{out}.part").write_bytes(full)
    assert export_file(daemon, vdi, out, "--resume", address="127.0.0.1") == full


def test_progress_and_quiet_against_the_daemon(daemon: Daemon, tmp_path: Path) -> None:
    vdi = daemon.create()
    out = tmp_path / "disk.raw"
    status, stdout, tty = with_tty_stderr("export", *daemon.auth(), "--vdi", vdi, "-o", str(out))
    assert status == 0 and b"100%" in tty and b"8.00M/8.00M" in tty, tty
    assert sha_of(stdout.decode())[0] == digest(bytes(SIZE))
    for command in (
        ("export", *daemon.auth(), "--vdi", vdi, "-o", str(out), "--quiet"),
        ("import", *daemon.auth(), "--vdi", vdi, str(out), "--quiet"),
    ):
        status, stdout, tty = with_tty_stderr(*command)
        assert status == 0 and tty == b"", tty
    status, stdout, tty = with_tty_stderr("import", *daemon.auth(), "--vdi", vdi, str(out))
    assert status == 0 and b"100%" in tty, tty


@ADDRESSES
def test_wrong_password_is_one_line_from_the_daemon(
    daemon: Daemon, address: str, tmp_path: Path
) -> None:
    vdi = daemon.create(MiB)
    auth = daemon.auth(address, password="wrong")
    error = one_error_line(xfer_run("export", *auth, "--vdi", vdi, "-o", str(tmp_path / "o")))
    assert error.startswith("401 "), error
    # the daemon's own line, as it answers any client
    line = daemon_line(
        daemon, "GET", f"/export_raw_vdi?vdi={vdi}", password="wrong", source=next(STRANGERS)
    )
    assert error == line
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(MiB))
    error = one_error_line(xfer_run("import", *auth, "--vdi", vdi, str(source)))
    assert error.startswith("401 "), error
    line = daemon_line(
        daemon, "PUT", f"/import_raw_vdi?vdi={vdi}", password="wrong", source=next(STRANGERS)
    )
    assert error == line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_daemon_errors_are_one_line(daemon: Daemon, tmp_path: Path) -> None:
    missing = str(uuidlib.uuid4())
    error = one_error_line(
        xfer_run("export", *daemon.auth(), "--vdi", missing, "-o", str(tmp_path / "o"))
    )
    assert error.startswith("404 "), error
    # the daemon's own line, as it answers any client
    assert error == daemon_line(daemon, "GET", f"/export_raw_vdi?vdi={missing}&format=raw")
    assert list(tmp_path.iterdir()) == []
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(2 * MiB))
    error = one_error_line(xfer_run("import", *daemon.auth(), "--vdi", missing, str(source)))
    assert error.startswith("404 "), error
    error = one_error_line(xfer_run("import", *daemon.auth(), "--sr", missing, str(source)))
    assert error.startswith("404 "), error
    small = daemon.create(MiB)
    error = one_error_line(xfer_run("import", *daemon.auth(), "--vdi", small, str(source)))
    assert error.startswith("413 "), error
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(pattern(4096, 3))
    error = one_error_line(
        xfer_run("import", *daemon.auth(), "--vdi", small, "--format", "vhd", str(bad))
    )
    assert error.startswith("400 "), error


def test_https_with_ca_and_insecure(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with serving(tmp_path, "--listen", "[::]:0", "--password", PASSWORD, *tls) as (proc, urls, _):
        match = re.fullmatch(r"https://\[::\]:(\d+)/", urls[0])
        assert match, urls
        port = int(match.group(1))
        ca = ("--ca", str(cert))
        v6 = ("--host", f"https://[::1]:{port}/", "--password", PASSWORD)
        v4 = ("--host", f"https://127.0.0.1:{port}", "--password", PASSWORD)
        source = tmp_path / "disk.raw"
        source.write_bytes(CONTENT[: 2 * MiB])
        vdi = xfer_ok("vdi", "create", *v6, *ca, "--size", "2M").strip()
        out = xfer_ok("import", *v6, *ca, "--vdi", vdi, str(source))
        assert imported(out, str(source), CONTENT[: 2 * MiB]) == vdi
        out = tmp_path / "back.raw"
        stdout = xfer_ok("export", *v4, *ca, "--vdi", vdi, "-o", str(out))
        assert out.read_bytes() == CONTENT[: 2 * MiB]
        assert sha_of(stdout) == (digest(CONTENT[: 2 * MiB]), str(out))
        error = one_error_line(xfer_run("export", *v6, "--vdi", vdi, "-o", str(out)))
        assert "CERTIFICATE_VERIFY_FAILED" in error, error
        stdout = xfer_ok("export", *v6, "--insecure", "--vdi", vdi, "-o", str(out))
        assert out.read_bytes() == CONTENT[: 2 * MiB]
        assert stop(proc) == 0
