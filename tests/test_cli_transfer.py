"""``xfer export`` and ``xfer import``: first against a small stand-in host (h11 on threads)
that can cut a body short, then end to end against a real ``xfer serve`` over ``[::1]`` and
``127.0.0.1``."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import pty
import re
import select
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from migrate.cli import transfer
from migrate.cli.main import main
from support import (
    PASSWORD,
    ROOT,
    UUID,
    XFER,
    Daemon,
    MiB,
    disk_content,
    make_dynamic,
    pattern,
    read_all,
    xfer_env,
)
from test_serve import serving, stop
from test_tls import make_certificate

SHA_LINE = re.compile(r"sha256 ([0-9a-f]{64})  (.+)")


def run(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``xfer ARGS`` in a subprocess (stdout and stderr are pipes, so no progress bar)."""
    return subprocess.run(
        [*XFER, *args],
        input=input,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env=env or xfer_env(),
        check=False,
    )


def ok(*args: str, input: bytes | None = None) -> str:
    """The stdout of a successful ``xfer ARGS`` (that printed nothing on stderr)."""
    proc = run(*args, input=input)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b"", proc.stderr.decode()
    return proc.stdout.decode()


def one_error_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The one ``xfer: error:`` line of a failed run, without the prefix."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, err)
    assert err.startswith("xfer: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.removeprefix("xfer: error: ").rstrip("\n")


def sha_of(out: str) -> tuple[str, str]:
    """The digest and file name of the ``sha256 HEX  FILE`` line (the last line)."""
    match = SHA_LINE.fullmatch(out.splitlines()[-1])
    assert match, out
    return match.group(1), match.group(2)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A stand-in host


@dataclass
class FakeHost:
    """``/export_raw_vdi`` and ``/import_raw_vdi`` as the contract says, on ``[::1]`` and
    ``127.0.0.1``, with a switch to cut an export after ``cut`` bytes."""

    disks: dict[str, bytes] = field(default_factory=dict)
    imports: list[tuple[dict[str, str], dict[str, str], bytes]] = field(default_factory=list)
    cut: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)

    def serve(self) -> list[socket.socket]:
        listeners = []
        for family, address in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
            sock = socket.create_server((address, 0), family=family)
            self.ports[address] = sock.getsockname()[1]
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
            listeners.append(sock)
        return listeners

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(sock,), daemon=True).start()

    def _connection(self, sock: socket.socket) -> None:
        with sock:
            conn = h11.Connection(h11.SERVER)
            with contextlib.suppress(OSError, h11.ProtocolError):
                self._handle(sock, conn)

    def _next(self, sock: socket.socket, conn: h11.Connection) -> h11.Event | type[h11.NEED_DATA]:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            conn.receive_data(sock.recv(1 << 20))

    def _send(self, sock: socket.socket, conn: h11.Connection, status: int, body: bytes) -> None:
        headers = [("content-length", str(len(body)))]
        if status == 401:
            headers.append(("www-authenticate", 'Basic realm="xapi"'))
        sock.sendall(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        sock.sendall(conn.send(h11.Data(data=body)) or b"")
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")

    def _handle(self, sock: socket.socket, conn: h11.Connection) -> None:
        request = self._next(sock, conn)
        assert isinstance(request, h11.Request)
        headers = {k.decode(): v.decode() for k, v in request.headers}
        target = urllib.parse.urlsplit(request.target.decode())
        query = dict(urllib.parse.parse_qsl(target.query))
        body = b""
        while True:
            event = self._next(sock, conn)
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        expected = "Basic " + base64.b64encode(f"root:{PASSWORD}".encode()).decode()
        if headers.get("authorization") != expected:
            self._send(sock, conn, 401, b"401 Unauthorized: authentication failed\n")
            return
        if target.path == "/export_raw_vdi":
            self._export(sock, conn, query, headers)
        elif target.path == "/import_raw_vdi":
            self.imports.append((query, headers, body))
            vdi = query.get("vdi") or str(uuidlib.uuid4())
            self.disks[vdi] = body
            self._send(sock, conn, 200, f"OpaqueRef:{vdi}\n".encode())
        else:
            self._send(sock, conn, 404, b"404 Not Found: no such path\n")

    def _export(
        self, sock: socket.socket, conn: h11.Connection, query: dict[str, str], headers: dict
    ) -> None:
        disk = self.disks.get(query.get("vdi", ""))
        if disk is None:
            self._send(sock, conn, 404, f"404 Not Found: no VDI {query.get('vdi')}\n".encode())
            return
        self.ranges.append(headers.get("range"))
        start, status = 0, 200
        extra = []
        if "range" in headers:
            start = int(headers["range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(disk):
                sock.sendall(
                    conn.send(
                        h11.Response(
                            status_code=416,
                            headers=[
                                ("content-range", f"bytes */{len(disk)}"),
                                ("content-length", "0"),
                            ],
                        )
                    )
                    or b""
                )
                sock.sendall(conn.send(h11.EndOfMessage()) or b"")
                return
            status = 206
            extra = [("content-range", f"bytes {start}-{len(disk) - 1}/{len(disk)}")]
        body = disk[start:]
        head = [("content-length", str(len(body))), ("accept-ranges", "bytes"), *extra]
        sock.sendall(conn.send(h11.Response(status_code=status, headers=head)) or b"")
        if self.cut is not None:
            sock.sendall(conn.send(h11.Data(data=body[: self.cut])) or b"")
            self.cut = None
            sock.shutdown(socket.SHUT_RDWR)
            return
        sock.sendall(conn.send(h11.Data(data=body)) or b"")
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")


@pytest.fixture
def fake() -> Iterator[FakeHost]:
    host = FakeHost()
    listeners = host.serve()
    yield host
    for sock in listeners:
        sock.close()


def fake_auth(fake: FakeHost, address: str = "::1") -> tuple[str, ...]:
    host = f"[{address}]" if ":" in address else address
    return ("--host", f"{host}:{fake.ports[address]}", "--password", PASSWORD)


def xfer_in_process(*args: str) -> int:
    """``xfer ARGS`` in this process (output through the test's capfd)."""
    return main(list(args))


DISK = pattern(3 * transfer.CHUNK + 12345, 7)
"""Longer than three pieces and not a multiple of one."""


@pytest.mark.parametrize("address", ["::1", "127.0.0.1"])
def test_export_to_a_file(
    fake: FakeHost, address: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    out = tmp_path / "disk.raw"
    assert xfer_in_process("export", *fake_auth(fake, address), "--vdi", vdi, "-o", str(out)) == 0
    captured = capfd.readouterr()
    assert captured.err == ""
    assert out.read_bytes() == DISK
    assert sha_of(captured.out) == (digest(DISK), str(out))
    assert not Path(f"{out}.part").exists()


def test_export_to_stdout_prints_the_digest_on_stderr(fake: FakeHost) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    proc = run("export", *fake_auth(fake), "--vdi", vdi)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == DISK
    assert sha_of(proc.stderr.decode()) == (digest(DISK), "-")


def test_cut_export_keeps_the_part_and_resumes(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    out = tmp_path / "disk.raw"
    fake.cut = cut = transfer.CHUNK + 5000
    error = one_error_line(run("export", *fake_auth(fake), "--vdi", vdi, "-o", str(out)))
    assert "the transfer was cut" in error and "--resume" in error, error
    part = Path(f"{out}.part")
    assert not out.exists()
    # what arrived is a prefix of the disk (whole pieces: a piece is written once complete)
    kept = part.read_bytes()
    assert 0 < len(kept) <= cut and DISK.startswith(kept)

    stdout = ok("export", *fake_auth(fake), "--vdi", vdi, "-o", str(out), "--resume")
    assert fake.ranges[-1] == f"bytes={len(kept)}-"
    assert out.read_bytes() == DISK
    assert sha_of(stdout) == (digest(DISK), str(out))
    assert not part.exists()


def test_resume_of_a_complete_part_asks_for_nothing_more(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    out = tmp_path / "disk.raw"
    Path(f"{out}.part").write_bytes(DISK)
    stdout = ok("export", *fake_auth(fake), "--vdi", vdi, "-o", str(out), "--resume")
    assert out.read_bytes() == DISK and sha_of(stdout)[0] == digest(DISK)


def test_resume_without_a_part_starts_from_zero(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK[:5000]
    out = tmp_path / "disk.raw"
    ok("export", *fake_auth(fake), "--vdi", vdi, "-o", str(out), "--resume")
    assert fake.ranges == [None] and out.read_bytes() == DISK[:5000]


def test_cut_vhd_export_leaves_nothing(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    fake.cut = transfer.CHUNK + 5000
    out = tmp_path / "disk.vhd"
    proc = run("export", *fake_auth(fake), "--vdi", vdi, "--format", "vhd", "-o", str(out))
    assert "--resume" not in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("address", ["::1", "127.0.0.1"])
def test_import_a_file_with_its_length(fake: FakeHost, address: str, tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(DISK)
    vdi = str(uuidlib.uuid4())
    stdout = ok("import", *fake_auth(fake, address), "--vdi", vdi, str(source))
    assert stdout.splitlines()[0] == f"vdi {vdi}"
    assert sha_of(stdout) == (digest(DISK), str(source))
    ((query, headers, body),) = fake.imports
    assert query == {"vdi": vdi, "format": "raw"}
    assert headers["content-length"] == str(len(DISK)) and "transfer-encoding" not in headers
    assert body == DISK


def test_import_stdin_is_chunked_into_a_new_vdi(fake: FakeHost) -> None:
    stdout = ok(
        "import",
        *fake_auth(fake),
        "--sr",
        "sr-1",
        "--name",
        "new disk",
        "--format",
        "vhd",
        "-",
        input=DISK,
    )
    ((query, headers, body),) = fake.imports
    assert query == {"sr_id": "sr-1", "format": "vhd", "name_label": "new disk"}
    assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    assert body == DISK
    (line, sha) = stdout.splitlines()
    (created,) = [vdi for vdi in fake.disks]
    assert line == f"vdi {created}"
    assert sha == f"sha256 {digest(DISK)}  -"


def test_wrong_password_is_one_line(fake: FakeHost, tmp_path: Path) -> None:
    source = tmp_path / "disk.raw"
    source.write_bytes(DISK[:4096])
    host = ("--host", f"[::1]:{fake.ports['::1']}", "--password", "wrong")
    error = one_error_line(run("import", *host, "--vdi", "x", str(source)))
    assert error == "401 Unauthorized: authentication failed"
    error = one_error_line(run("export", *host, "--vdi", "x", "-o", str(tmp_path / "out")))
    assert error == "401 Unauthorized: authentication failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_failed_resume_keeps_the_part(fake: FakeHost, tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    part = Path(f"{out}.part")
    part.write_bytes(DISK[:1000])
    host = ("--host", f"[::1]:{fake.ports['::1']}", "--password", "wrong")
    one_error_line(run("export", *host, "--vdi", "x", "-o", str(out), "--resume"))
    assert part.read_bytes() == DISK[:1000]


def test_password_from_the_environment(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = b"x" * 512
    host = ("--host", f"127.0.0.1:{fake.ports['127.0.0.1']}")
    proc = run(
        "export",
        *host,
        "--vdi",
        vdi,
        "-o",
        str(tmp_path / "o"),
        env=xfer_env(XFER_PASSWORD=PASSWORD),
    )
    assert proc.returncode == 0, proc.stderr
    assert "no password" in one_error_line(run("export", *host, "--vdi", vdi))


def test_host_errors_are_the_hosts_line(fake: FakeHost, tmp_path: Path) -> None:
    proc = run("export", *fake_auth(fake), "--vdi", "nope", "-o", str(tmp_path / "o"))
    assert one_error_line(proc) == "404 Not Found: no VDI nope"
    assert list(tmp_path.iterdir()) == []


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
def test_usage_errors_are_one_line(fake: FakeHost, args: tuple[str, ...], text: str) -> None:
    command, *rest = args
    error = one_error_line(run(command, *fake_auth(fake), *rest))
    assert text in error, error


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]  # bound, not listening
        host = ("--host", f"[::1]:{port}", "--password", "x")
        error = one_error_line(run("export", *host, "--vdi", "v", "-o", str(tmp_path / "o")))
        assert error.startswith(f"cannot reach http://[::1]:{port}/export_raw_vdi: "), error
        source = tmp_path / "in"
        source.write_bytes(b"x" * 512)
        error = one_error_line(run("import", *host, "--vdi", "v", str(source)))
        assert error.startswith(f"cannot reach http://[::1]:{port}/import_raw_vdi: "), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.parametrize("text", ["[::1", "fe80::1", "ftp://[::1]/"])
def test_bad_host_is_one_line(text: str) -> None:
    one_error_line(run("export", "--host", text, "--password", "x", "--vdi", "v"))


def test_zoned_host_urls() -> None:
    from migrate.cli.rpc_client import _socket_host, endpoint, request_extensions

    host, _ = endpoint("[fe80::1%25eth0]:8080")
    url = host.url(transfer.EXPORT_PATH)
    assert url == "http://[fe80::1%25eth0]:8080/export_raw_vdi"
    assert request_extensions(url) == {"sni_hostname": "fe80::1"}
    assert request_extensions("http://[::1]:8080/") == {}
    assert _socket_host("fe80::1%25eth0") == "fe80::1%eth0"


def with_tty_stderr(*args: str) -> tuple[int, bytes, bytes]:
    """``xfer ARGS`` with stderr on a pseudo-terminal: exit status, stdout, what the terminal
    got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [*XFER, *args], stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env=xfer_env()
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=10), out, seen


def test_progress_on_a_terminal_and_none_with_quiet(fake: FakeHost, tmp_path: Path) -> None:
    vdi = str(uuidlib.uuid4())
    fake.disks[vdi] = DISK
    out = tmp_path / "disk.raw"
    status, stdout, tty = with_tty_stderr("export", *fake_auth(fake), "--vdi", vdi, "-o", str(out))
    assert status == 0, tty
    assert b"100%" in tty and b"24.0M/24.0M" in tty and b"MiB/s]" in tty, tty
    assert sha_of(stdout.decode())[0] == digest(DISK)

    status, stdout, tty = with_tty_stderr(
        "export", *fake_auth(fake), "--vdi", vdi, "-o", str(out), "--quiet"
    )
    assert status == 0 and tty == b"", tty
    status, stdout, tty = with_tty_stderr(
        "import", *fake_auth(fake), "--vdi", vdi, str(out), "--quiet"
    )
    assert status == 0 and tty == b"", tty
    status, stdout, tty = with_tty_stderr("import", *fake_auth(fake), "--vdi", vdi, str(out))
    assert status == 0 and b"100%" in tty, tty


# Against a real xfer serve


SIZE = 8 * MiB
WRITES = [(0, pattern(5000, 1)), (3 * MiB - 7, pattern(MiB + 99, 2)), (SIZE - 512, b"z" * 512)]
CONTENT = disk_content(SIZE, WRITES)
ADDRESSES = pytest.mark.parametrize("address", ["::1", "127.0.0.1"])


def export_file(daemon: Daemon, vdi: str, out: Path, *extra: str, address: str = "::1") -> bytes:
    """Export ``vdi`` to ``out``; its bytes, checked against the printed digest."""
    stdout = ok("export", *daemon.auth(address), "--vdi", vdi, "-o", str(out), *extra)
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


@ADDRESSES
def test_raw_file_round_trip(daemon: Daemon, address: str, tmp_path: Path) -> None:
    vdi = daemon.create()
    source = tmp_path / "disk.raw"
    source.write_bytes(CONTENT)
    out = ok("import", *daemon.auth(address), "--vdi", vdi, str(source))
    assert imported(out, str(source), CONTENT) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw", address=address) == CONTENT
    # and to stdout
    proc = run("export", *daemon.auth(address), "--vdi", vdi, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CONTENT
    assert sha_of(proc.stderr.decode()) == (digest(CONTENT), "-")


@ADDRESSES
def test_raw_stdin_chunked_into_a_new_vdi(daemon: Daemon, address: str, tmp_path: Path) -> None:
    data = CONTENT[: 3 * MiB + 3 * 512]
    out = ok("import", *daemon.auth(address), "--sr", daemon.sr, "--name", "piped", "-", input=data)
    vdi = imported(out, "-", data)
    row = daemon.vdis()[vdi]
    assert row["name_label"] == "piped" and row["virtual_size"] == len(data), row
    assert export_file(daemon, vdi, tmp_path / "back.raw") == data


@ADDRESSES
def test_raw_stdin_into_a_vdi(daemon: Daemon, address: str, tmp_path: Path) -> None:
    vdi = daemon.create()
    out = ok("import", *daemon.auth(address), "--vdi", vdi, "-", input=CONTENT)
    assert imported(out, "-", CONTENT) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw") == CONTENT


@ADDRESSES
def test_vhd_round_trips(daemon: Daemon, address: str, tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    make_dynamic(image, SIZE, WRITES)
    vhd_bytes = image.read_bytes()
    vdi = daemon.create()
    out = ok("import", *daemon.auth(address), "--vdi", vdi, "--format", "vhd", str(image))
    assert imported(out, str(image), vhd_bytes) == vdi
    assert export_file(daemon, vdi, tmp_path / "back.raw", address=address) == CONTENT

    exported = tmp_path / "back.vhd"
    export_file(daemon, vdi, exported, "--format", "vhd", address=address)
    assert read_all(exported) == CONTENT

    # the exported VHD into a new VDI, through stdin
    data = exported.read_bytes()
    out = ok("import", *daemon.auth(address), "--sr", daemon.sr, "--format", "vhd", "-", input=data)
    new = imported(out, "-", data)
    assert new != vdi
    assert daemon.vdis()[new]["virtual_size"] == SIZE
    assert export_file(daemon, new, tmp_path / "new.raw") == CONTENT


def test_resume_after_a_partial_file(daemon: Daemon, tmp_path: Path) -> None:
    vdi = daemon.create()
    source = tmp_path / "disk.raw"
    source.write_bytes(CONTENT)
    ok("import", *daemon.auth(), "--vdi", vdi, "--quiet", str(source))
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
    vdi = daemon.create("1M")
    auth = daemon.auth(address, password="wrong")
    error = one_error_line(run("export", *auth, "--vdi", vdi, "-o", str(tmp_path / "o")))
    assert error.startswith("401 "), error
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(MiB))
    error = one_error_line(run("import", *auth, "--vdi", vdi, str(source)))
    assert error.startswith("401 "), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_daemon_errors_are_one_line(daemon: Daemon, tmp_path: Path) -> None:
    missing = str(uuidlib.uuid4())
    error = one_error_line(
        run("export", *daemon.auth(), "--vdi", missing, "-o", str(tmp_path / "o"))
    )
    assert error.startswith("404 "), error
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(2 * MiB))
    error = one_error_line(run("import", *daemon.auth(), "--vdi", missing, str(source)))
    assert error.startswith("404 "), error
    error = one_error_line(run("import", *daemon.auth(), "--sr", missing, str(source)))
    assert error.startswith("404 "), error
    small = daemon.create("1M")
    error = one_error_line(run("import", *daemon.auth(), "--vdi", small, str(source)))
    assert error.startswith("413 "), error
    bad = tmp_path / "bad.vhd"
    bad.write_bytes(pattern(4096, 3))
    error = one_error_line(
        run("import", *daemon.auth(), "--vdi", small, "--format", "vhd", str(bad))
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
        vdi = ok("vdi", "create", *v6, *ca, "--size", "2M").strip()
        out = ok("import", *v6, *ca, "--vdi", vdi, str(source))
        assert imported(out, str(source), CONTENT[: 2 * MiB]) == vdi
        out = tmp_path / "back.raw"
        stdout = ok("export", *v4, *ca, "--vdi", vdi, "-o", str(out))
        assert out.read_bytes() == CONTENT[: 2 * MiB]
        assert sha_of(stdout) == (digest(CONTENT[: 2 * MiB]), str(out))
        error = one_error_line(run("export", *v6, "--vdi", vdi, "-o", str(out)))
        assert "CERTIFICATE_VERIFY_FAILED" in error, error
        stdout = ok("export", *v6, "--insecure", "--vdi", vdi, "-o", str(out))
        assert out.read_bytes() == CONTENT[: 2 * MiB]
        assert stop(proc) == 0
