"""Benchmark: xfer's VDI transfers over HTTP against their peers, all on IPv6 loopback.

Every figure is a pair run in the same process, xfer and its peer interleaved (xfer, peer,
xfer, peer, ...), each timed whole with ``time.perf_counter`` around a subprocess (start-up
included), ``--runs`` times (default 5); targets are judged on the median runs (this VM's
memory speed moves single runs both ways, nginx's best run was once twice its median), the
best runs printed beside them. Only ``::1`` is used; every server is started here and stopped in a
``finally`` block.

1. **raw export**: ``curl -g -o /dev/null http://[::1]:P/export_raw_vdi?vdi=U&format=raw -u
   root:PW`` of a ``--size`` (2 GiB) VDI holding random data, against curl fetching the same
   bytes as a file from nginx (``sendfile on``, as ``/work/shared/anchors/http_peer.sh``).
   Target: throughput xfer/nginx >= 1.0.
2. **raw import, xfer's client**: ``xfer import --host [::1]:P --vdi U FILE --quiet`` of a
   ``--size`` file into an existing VDI of that size, against one iperf3 TCP stream moving the
   same bytes (``iperf3 -c ::1 -n BYTES`` against ``iperf3 -s -1``). Throughput = bytes / wall
   time of the client command. Target >= 0.8. Beside them, the ceiling the client's own
   sha256 sets: ``openssl dgst -sha256 FILE`` (the OpenSSL code hashlib runs).
3. **raw import, curl**: ``curl -g -T FILE .../import_raw_vdi?vdi=U&format=raw`` against
   ``curl -g -T FILE`` into a sink that discards the body (``--sink http``, the default: a tiny
   HTTP/1.1 server in Python, a blocking socket read with ``recv_into`` into one 4 MiB buffer;
   ``--sink socat``: ``socat -u -T 0.05 TCP6-LISTEN ... OPEN:/dev/null`` with curl speaking
   ``telnet://``, where socat's 50 ms idle timeout ends the connection, since curl itself never
   closes a telnet upload). Target >= 0.9. Beside them, the floor of a durable import on
   this disk: ``dd bs=4M oflag=direct conv=fsync`` of the same bytes into the SR's directory,
   and the same upload over TLS (``curl -k -T`` into figure 6's server).
4. **sparse VHD export**: a 100 GiB VDI holding 1 GiB (512 blocks of 2 MiB of random data
   spread evenly; imported as a VHD made with ``xfer vhd convert`` from a sparse raw file)
   exported as a VHD, against a dense 1 GiB VDI exported as a VHD, both fetched by curl.
   Target: time ratio sparse/dense <= 1.3 (the cost follows the data, not the virtual size).
5. **server RSS**: ``VmRSS`` of the ``xfer serve`` process sampled every 50 ms from
   ``/proc`` (its children, ``ip`` runs, apart) while four ``--size`` transfers run at once
   (two curl raw exports, two curl raw imports into two VDIs); ``VmHWM`` (reset through
   ``/proc/PID/clear_refs``) is printed beside it. Target: peak < 150 MiB over all runs.
6. **TLS export**: a second server with ``--tls-cert/--tls-key`` (a self-signed P-256
   certificate for ``::1``: ``cryptography`` if installed, else ``openssl req``), holding the
   same data, fetched with ``curl -k``; interleaved with figure 1. Target: >= 0.5 times the
   plain-HTTP export of the same run. Beside it, nginx over TLS (same certificate) fetched by
   the same ``curl -k``: what curl receives over TLS on this machine at all.

Before each timed command ``os.sync()`` is called (earlier imports leave GiBs of dirty pages)
and the files it reads (the source file, the server's VDI file) are read once so that both
sides find them in the page cache. Checks: every curl answer is 2xx with the expected byte
count, and at the end a raw export of the import target hashes like the source file.

The report (stdout) gives the machine, the versions, a table of figures and the targets as
PASS/FAIL; progress goes to stderr. Exit status 0 whatever the targets say, 1 if a command
fails, a check fails or ``--time-limit`` runs out.

Run from the repository root::

    .venv/bin/python bench/vdi_transfer.py            # 2 GiB transfers, 3 runs: a few minutes
    .venv/bin/python bench/vdi_transfer.py --quick    # 256 MiB: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common import cache, xfer_command

from migrate.cli.units import parse_size

MIB = 1 << 20
GIB = 1 << 30
BLOCK = 2 * MIB
"""The VHD block size: the granularity of the sparse VDI's data."""
CHUNK = 4 * MIB
DEFAULT_SIZE = "2G"
QUICK_SIZE = 256 * MIB
SPARSE_VIRTUAL = 100 * GIB
"""Virtual size of the sparse VDI (figure 4), also with --quick: holes cost nothing to make."""
SPARSE_DATA = 1 * GIB
"""Data the sparse VDI holds, and the size of the dense VDI it is compared with."""
PASSWORD = "bench-pw"
SAMPLE_INTERVAL = 0.05
"""Seconds between two RSS samples."""
DEFAULT_TIME_LIMIT = 1200.0
COMMAND_CAP = 600.0
"""No single command may take longer than this, whatever time is left."""
NOISY = 1.25

EXPORT_TARGET = 1.0
IMPORT_IPERF_TARGET = 0.8
IMPORT_CURL_TARGET = 0.9
SPARSE_TARGET = 1.3
RSS_TARGET_MIB = 150.0
TLS_TARGET = 0.5

ROOT = Path(__file__).resolve().parent.parent

SINK = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::1", int(sys.argv[1])))
srv.listen(8)
view = memoryview(bytearray(4 << 20))
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(65536)
            if not data:
                break
            head += data
        top, _, rest = head.partition(b"\r\n\r\n")
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(b":") for line in top.split(b"\r\n")[1:])
        )
        left = int(fields.get(b"content-length", b"0")) - len(rest)
        if fields.get(b"expect", b"").lower() == b"100-continue" and not rest:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while left > 0:
            n = conn.recv_into(view, min(left, len(view)))
            if not n:
                break
            left -= n
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
"""
"""The discarding HTTP sink of figure 3 (``--sink http``): PUT bodies by Content-Length."""


class BenchError(Exception):
    """A command failed, a check failed or time ran out: the run cannot be trusted."""


# --- time, processes, ports ----------------------------------------------------------------


@dataclass
class Deadline:
    """The whole benchmark's time bound."""

    end: float

    def left(self) -> float:
        """Seconds a command may still take; BenchError once the bound has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise BenchError("--time-limit reached: the benchmark stopped here")
        return min(left, COMMAND_CAP)


def progress(text: str) -> None:
    """A progress line on stderr, so stdout holds only the report."""
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on ::1 that is free right now."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether some socket listens on TCP port ``port`` of ``::1`` (or ``::``), from /proc."""
    wanted = {"00000000000000000000000001000000", "00000000000000000000000000000000"}
    with open("/proc/net/tcp6") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            address, _, hexport = fields[1].partition(":")
            if fields[3] == "0A" and int(hexport, 16) == port and address in wanted:
                return True
    return False


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Wait (up to 10 s) until ``port`` listens; BenchError if ``proc`` dies first."""
    limit = time.monotonic() + 10
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > limit:
            raise BenchError(f"{what} did not start listening on [::1]:{port}: {tail(log)}")
        time.sleep(0.02)


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log file, on one line."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


class Processes:
    """The servers started by the benchmark; :meth:`stop_all` ends each one, by its pid."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, what: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group, stdout and stderr to ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.running.append((what, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL to the process group it leads after 5 s."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.running = [(w, p) for w, p in self.running if p is not proc]

    def stop_all(self) -> None:
        """Stop every server still running, newest first."""
        for _, proc in reversed(self.running):
            self.stop(proc)


@dataclass(frozen=True)
class Timing:
    """One timed command: wall seconds and what it printed."""

    seconds: float
    stdout: str


def run(argv: list[str], deadline: Deadline, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout. BenchError if it fails or takes too long."""
    try:
        out = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=deadline.left(),
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{shlex.join(argv)} did not finish in time (killed)") from None
    if out.returncode != 0:
        raise BenchError(
            f"{shlex.join(argv)} exited with {out.returncode}: "
            + (out.stderr.strip() or out.stdout.strip())[-800:]
        )
    return out.stdout


def timed(argv: list[str], deadline: Deadline, env: dict[str, str] | None = None) -> Timing:
    """Run a command, timed whole: (seconds, stdout)."""
    start = time.perf_counter()
    stdout = run(argv, deadline, env)
    return Timing(time.perf_counter() - start, stdout)


# --- files ---------------------------------------------------------------------------------


def make_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            data = os.urandom(min(CHUNK, left))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return digest.hexdigest()


def make_sparse(path: Path, virtual: int, data: int) -> None:
    """A sparse raw file of ``virtual`` bytes, ``data`` of them random, in 2 MiB blocks
    spread evenly over the whole file."""
    total, count = virtual // BLOCK, data // BLOCK
    with open(path, "wb") as f:
        f.truncate(virtual)
        for i in range(count):
            f.seek(i * total // count * BLOCK)
            f.write(os.urandom(BLOCK))


def prefix_copy(src: Path, dst: Path, size: int) -> None:
    """``dst``: the first ``size`` bytes of ``src``, copied inside the kernel."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left = size
        while left:
            left -= os.copy_file_range(fi.fileno(), fo.fileno(), left)


# --- the servers ---------------------------------------------------------------------------


@dataclass
class XferServer:
    """A running ``xfer serve`` on ``[::1]``, its state in its own directory."""

    proc: subprocess.Popen[bytes]
    url: str
    """``http://[::1]:PORT`` or ``https://...``, no trailing slash."""
    state: Path
    log: Path
    xfer: list[str]
    insecure: bool = False
    seen: int = 0
    """Bytes of the log already looked at by :meth:`new_log`."""

    @property
    def host(self) -> list[str]:
        """The ``--host`` (and ``--insecure``) arguments of xfer's client commands."""
        return ["--host", self.url, *(["--insecure"] if self.insecure else [])]

    def vdi_create(self, size: int, name: str, deadline: Deadline) -> str:
        """A new VDI of ``size`` bytes; its uuid."""
        argv = [*self.xfer, "vdi", "create", *self.host, "--size", str(size), "--name", name]
        return run(argv, deadline, xfer_env()).strip().split()[-1]

    def vdi_destroy(self, uuid: str, deadline: Deadline) -> None:
        """Remove the VDI ``uuid``."""
        run([*self.xfer, "vdi", "destroy", *self.host, "--vdi", uuid], deadline, xfer_env())

    def import_argv(self, uuid: str, path: Path, fmt: str = "raw") -> list[str]:
        """``xfer import`` of ``path`` into the VDI ``uuid``."""
        argv = [*self.xfer, "import", *self.host, "--vdi", uuid, "--format", fmt]
        return [*argv, "--quiet", str(path)]

    def export_url(self, uuid: str, fmt: str = "raw") -> str:
        """The export URL of the VDI ``uuid``."""
        return f"{self.url}/export_raw_vdi?vdi={uuid}&format={fmt}"

    def import_url(self, uuid: str, fmt: str = "raw") -> str:
        """The import URL into the VDI ``uuid``."""
        return f"{self.url}/import_raw_vdi?vdi={uuid}&format={fmt}"

    def vdi_file(self, uuid: str) -> Path:
        """The file of the VDI ``uuid`` in the server's SR directory."""
        found = [p for p in self.state.rglob(f"{uuid}.*") if not p.name.endswith(".part")]
        if not found:
            raise BenchError(f"no file for VDI {uuid} under {self.state}")
        return found[0]

    def new_log(self) -> str:
        """The server's log lines written since the last call."""
        with open(self.log, "rb") as f:
            f.seek(self.seen)
            data = f.read()
        self.seen += len(data)
        return data.decode(errors="replace")


def xfer_env() -> dict[str, str]:
    """The environment of xfer's client commands: the password in ``XFER_PASSWORD``."""
    return {**os.environ, "XFER_PASSWORD": PASSWORD}


def start_xfer(
    procs: Processes,
    xfer: list[str],
    workdir: Path,
    name: str,
    tls: tuple[Path, Path] | None = None,
) -> XferServer:
    """Start ``xfer serve`` on ``[::1]`` (a free port), state in ``workdir/name``."""
    state = workdir / name
    state.mkdir()
    log, out = workdir / f"{name}.log", workdir / f"{name}.out"
    argv = [*xfer, "serve", "--state-dir", str(state), "--listen", "[::1]:0"]
    argv += ["--password", PASSWORD]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    with open(out, "wb") as stdout, open(log, "wb") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,
        )
    procs.running.append((name, proc))
    limit = time.monotonic() + 30
    while True:
        found = re.search(r"listening on (https?://\[::1\]:\d+)/", out.read_text(errors="replace"))
        if found:
            break
        if proc.poll() is not None or time.monotonic() > limit:
            raise BenchError(f"{shlex.join(argv)} did not start: {tail(log)}")
        time.sleep(0.05)
    return XferServer(proc, found.group(1), state, log, xfer, insecure=tls is not None)


def nginx_binary() -> str:
    """Where nginx is (often /usr/sbin, outside a user's PATH)."""
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(
    procs: Processes, workdir: Path, root: Path, tls: tuple[Path, Path]
) -> tuple[int, int]:
    """nginx serving ``root`` on ``[::1]`` with sendfile, as the peer anchor configures it,
    and over TLS with the certificate ``tls``: (the HTTP port, the HTTPS port)."""
    port, tls_port = free_port(), free_port()
    d = workdir / "nginx"
    d.mkdir()
    user = "user root; " if os.geteuid() == 0 else ""
    temps = " ".join(
        f"{k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (d / "nginx.conf").write_text(
        f"{user}daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/err.log;\n"
        "events {}\n"
        f"http {{ access_log off; sendfile on; {temps}\n"
        f"  server {{ listen [::1]:{port}; root {root}; }}\n"
        f"  server {{ listen [::1]:{tls_port} ssl; root {root};\n"
        f"    ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; }} }}\n"
    )
    log = d / "out.log"
    argv = [nginx_binary(), "-p", str(d), "-e", str(d / "err.log"), "-c", str(d / "nginx.conf")]
    proc = procs.start("nginx", argv, log)
    for p in (port, tls_port):
        wait_listening(p, proc, "nginx", d / "err.log")
    return port, tls_port


def make_cert(workdir: Path, deadline: Deadline) -> tuple[Path, Path, str]:
    """A self-signed P-256 certificate for ``::1`` (and localhost): (cert, key, how made)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509  # type: ignore[import-not-found]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore
        from cryptography.x509.oid import NameOID  # type: ignore
    except ImportError:
        argv = ["openssl", "req", "-x509", "-newkey", "ec", "-nodes", "-days", "2"]
        argv += ["-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", "/CN=localhost"]
        argv += ["-addext", "subjectAltName=IP:::1,DNS:localhost"]
        run([*argv, "-keyout", str(key), "-out", str(cert)], deadline)
        return cert, key, "openssl req (cryptography not installed)"
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key, "the cryptography package"


# --- curl ----------------------------------------------------------------------------------

CURL_W = r"\n%{http_code} %{size_download} %{size_upload}"
"""curl's -w format: curl itself turns the ``\\n`` into a newline."""


def curl_get(url: str, auth: bool = True, insecure: bool = False) -> list[str]:
    """curl fetching ``url`` into /dev/null, printing the status and the byte counts."""
    argv = ["curl", "-gsS", "-o", "/dev/null", "-w", CURL_W, url]
    if auth:
        argv += ["-u", f"root:{PASSWORD}"]
    return argv + (["-k"] if insecure else [])


def curl_put(path: Path, url: str, auth: bool = True, insecure: bool = False) -> list[str]:
    """curl uploading ``path`` to ``url`` (PUT), printing the body, status and byte counts."""
    argv = ["curl", "-gsS", "-T", str(path), "-w", CURL_W, url]
    if auth:
        argv += ["-u", f"root:{PASSWORD}"]
    return argv + (["-k"] if insecure else [])


def check_curl(stdout: str, what: str, down: int | None = None, up: int | None = None) -> str:
    """The body curl printed before the status line; BenchError unless the status is 2xx and
    the byte counts are the expected ones."""
    body, _, last = stdout.rpartition("\n")
    fields = last.split()
    if len(fields) != 3:
        raise BenchError(f"{what}: unexpected curl output {stdout[-200:]!r}")
    status, got_down, got_up = int(fields[0]), int(fields[1]), int(fields[2])
    if not 200 <= status < 300:
        raise BenchError(f"{what}: HTTP {status}: {body.strip()[:300]}")
    if down is not None and got_down != down:
        raise BenchError(f"{what}: {got_down} bytes downloaded, expected {down}")
    if up is not None and got_up != up:
        raise BenchError(f"{what}: {got_up} bytes uploaded, expected {up}")
    return body


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Figure:
    """The timed runs of one contender of a measurement."""

    name: str
    command: str
    size: int
    """Bytes moved per run (for throughput)."""
    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The fastest run: noise only ever adds time."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """The median run."""
        return statistics.median(self.seconds)

    @property
    def mib_s(self) -> float:
        """Throughput of the best run."""
        return self.size / MIB / self.best


@dataclass
class Contender:
    """One side of a measurement: its figure and how to run it once (returns seconds)."""

    figure: Figure
    once: Callable[[], float]


def interleave(label: str, contenders: list[Contender], runs: int) -> None:
    """Run the contenders in turn, ``runs`` rounds, recording each run's seconds."""
    for i in range(runs):
        for c in contenders:
            os.sync()
            seconds = c.once()
            c.figure.seconds.append(seconds)
            progress(
                f"  {label}: {c.figure.name:<22} run {i + 1}/{runs}: {seconds:7.3f} s "
                f"({c.figure.size / MIB / seconds:7.0f} MiB/s)"
            )


@dataclass
class Outcome:
    """A target: its text, whether it was met and the measured value."""

    name: str
    met: bool
    value: str


@dataclass
class Report:
    """Everything measured so far (printed even if a later step fails)."""

    figures: list[tuple[str, Figure]] = field(default_factory=list)
    targets: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ratio_target(
    report: Report, name: str, xfer: Figure, peer: Figure, limit: float, *, by_time: bool = False
) -> None:
    """Record a ratio target on the median runs (this VM's memory speed moves runs both ways:
    a best run can be an outlier): throughput xfer/peer >= limit, or time xfer/peer <= limit.
    The ratio of the best runs is printed beside it."""
    if by_time:
        r, best = xfer.median / peer.median, xfer.best / peer.best
        met = r <= limit
        text = f"{name}: time {xfer.name} / {peer.name} <= {limit:.2f}"
    else:
        r = (xfer.size / xfer.median) / (peer.size / peer.median)
        best = (xfer.size / xfer.best) / (peer.size / peer.best)
        met = r >= limit
        text = f"{name}: throughput {xfer.name} / {peer.name} >= {limit:.2f}"
    value = (
        f"{r:.2f} on medians, {best:.2f} on best runs ({xfer.name} {xfer.median:.3f} s, "
        f"{peer.name} {peer.median:.3f} s)"
    )
    report.targets.append(Outcome(text, met, value))


# --- RSS -----------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/PID/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (0 if the process is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples the VmRSS of a process every ``SAMPLE_INTERVAL`` in a thread, and apart from it
    the summed VmRSS of its children (the server runs ``ip`` now and then: between fork and
    exec such a child shows the parent's pages, so adding it in would count them twice)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.children_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            children = sum(status_kib(p, "VmRSS") for p in tree(self.pid)[1:])
            self.children_kib = max(self.children_kib, children)
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (``clear_refs`` 5); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --- the measurements ----------------------------------------------------------------------


@dataclass
class Setup:
    """What the measurements share."""

    args: argparse.Namespace
    workdir: Path
    procs: Processes
    deadline: Deadline
    xfer: list[str]
    report: Report
    source: Path
    source_sha: str
    plain: XferServer
    export_vdi: str
    import_vdi: str


def measure_exports(
    s: Setup, tls: XferServer, tls_vdi: str, nginx_port: int, nginx_tls_port: int
) -> None:
    """Figures 1 and 6: curl from nginx and from xfer, over HTTP and over HTTPS, interleaved.
    nginx over HTTPS is no target's peer: it shows what curl receives over TLS here at all."""
    size, d = s.args.size, s.deadline
    plain_file, tls_file = s.plain.vdi_file(s.export_vdi), tls.vdi_file(tls_vdi)

    def fetch(argv: list[str], *cached: Path) -> Callable[[], float]:
        def once() -> float:
            cache(*cached)
            t = timed(argv, d)
            check_curl(t.stdout, shlex.join(argv), down=size)
            return t.seconds

        return once

    nginx_argv = curl_get(f"http://[::1]:{nginx_port}/{s.source.name}", auth=False)
    xfer_argv = curl_get(s.plain.export_url(s.export_vdi))
    tls_argv = curl_get(tls.export_url(tls_vdi), insecure=True)
    nginx_tls_argv = curl_get(
        f"https://[::1]:{nginx_tls_port}/{s.source.name}", auth=False, insecure=True
    )
    nginx = Figure("nginx -> curl", shlex.join(nginx_argv), size)
    plain = Figure("xfer http -> curl", shlex.join(xfer_argv), size)
    https = Figure("xfer https -> curl -k", shlex.join(tls_argv), size)
    nginx_https = Figure("nginx https -> curl -k", shlex.join(nginx_tls_argv), size)
    interleave(
        "raw export",
        [
            Contender(plain, fetch(xfer_argv, plain_file)),
            Contender(nginx, fetch(nginx_argv, s.source)),
            Contender(https, fetch(tls_argv, tls_file)),
            Contender(nginx_https, fetch(nginx_tls_argv, s.source)),
        ],
        s.args.runs,
    )
    s.report.figures += [("1 raw export", plain), ("1 raw export", nginx)]
    s.report.figures += [("6 TLS", https), ("6 TLS", nginx_https)]
    ratio_target(s.report, "1 raw export", plain, nginx, EXPORT_TARGET)
    ratio_target(s.report, "6 TLS export", https, plain, TLS_TARGET)
    s.report.notes.append(
        f"figure 6: on medians nginx over TLS reaches {nginx.median / nginx_https.median:.2f}x "
        f"nginx over HTTP; xfer over TLS reaches {nginx_https.median / https.median:.2f}x "
        "nginx over TLS (the same curl -k receives both)"
    )


ACCOUNT = re.compile(r"received in ([\d.]+) s, image finished in ([\d.]+) s")
"""The server's log line of an import: body received in X s, image finished in Y s."""


def import_timing(s: Setup, argv: list[str], kind: str) -> tuple[float, str]:
    """Run an import command into the plain server, timed; (seconds, stdout). The server's
    own account of it (bytes received in, image finished in) goes into the notes."""
    s.plain.new_log()
    cache(s.source)
    t = timed(argv, s.deadline, xfer_env())
    log, limit = "", time.monotonic() + 2  # the server logs it just after answering
    while not (found := ACCOUNT.findall(log)) and time.monotonic() < limit:
        time.sleep(0.02)
        log += s.plain.new_log()
    if found:
        got, fin = found[-1]
        s.report.notes.append(f"{kind}: server says body received in {got} s, finished in {fin} s")
    return t.seconds, t.stdout


def measure_import_cli(s: Setup) -> None:
    """Figure 2: ``xfer import`` against one iperf3 stream of the same bytes."""
    size, d = s.args.size, s.deadline
    xfer_argv = s.plain.import_argv(s.import_vdi, s.source)
    port = free_port()
    iperf_argv = ["iperf3", "-c", "::1", "-p", str(port), "-n", str(size)]

    def xfer_once() -> float:
        seconds, stdout = import_timing(s, xfer_argv, "xfer import")
        if s.import_vdi not in stdout:
            raise BenchError(f"{shlex.join(xfer_argv)}: no 'vdi {s.import_vdi}' in {stdout!r}")
        return seconds

    def iperf_once() -> float:
        log = s.workdir / "iperf3.log"
        server = s.procs.start("iperf3", ["iperf3", "-s", "-1", "-B", "::1", "-p", str(port)], log)
        try:
            wait_listening(port, server, "iperf3 -s", log)
            t = timed(iperf_argv, d)
            server.wait(10)
            return t.seconds
        finally:
            s.procs.stop(server)

    # what xfer import cannot beat whatever the network and the disk: it hashes every byte,
    # with OpenSSL's sha256 as this (coreutils' sha256sum here is three times slower)
    hash_argv = ["openssl", "dgst", "-sha256", str(s.source)]

    def hash_once() -> float:
        cache(s.source)
        return timed(hash_argv, d).seconds

    xfer = Figure("xfer import", shlex.join(xfer_argv), size)
    iperf = Figure("iperf3 one stream", shlex.join(iperf_argv), size)
    hashing = Figure("openssl sha256", shlex.join(hash_argv), size)
    contenders = [Contender(xfer, xfer_once), Contender(iperf, iperf_once)]
    interleave("raw import", [*contenders, Contender(hashing, hash_once)], s.args.runs)
    s.report.figures += [("2 xfer import", f) for f in (xfer, iperf, hashing)]
    ratio_target(s.report, "2 raw import (xfer client)", xfer, iperf, IMPORT_IPERF_TARGET)
    s.report.notes.append(
        f"figure 2: sha256 alone reaches {iperf.median / hashing.median:.2f}x iperf3 on "
        f"medians; xfer import reaches {hashing.median / xfer.median:.2f}x sha256 alone"
    )


def start_sink(s: Setup) -> tuple[str, str, subprocess.Popen[bytes]]:
    """The discarding sink of figure 3: (the URL curl uploads to, what it is, the process)."""
    port = free_port()
    log = s.workdir / "sink.log"
    if s.args.sink == "socat":
        argv = ["socat", "-u", "-T", "0.05"]
        argv += [f"TCP6-LISTEN:{port},bind=[::1],reuseaddr,fork", "OPEN:/dev/null"]
        what = f"{shlex.join(argv)}, curl speaking telnet:// (the 50 ms idle timeout ends it)"
        url = f"telnet://[::1]:{port}"
    else:
        argv = [sys.executable, "-c", SINK, str(port)]
        what = "a tiny HTTP/1.1 sink in Python (blocking socket, recv_into one 4 MiB buffer)"
        url = f"http://[::1]:{port}/sink"
    proc = s.procs.start("sink", argv, log)
    wait_listening(port, proc, "the sink", log)
    return url, what, proc


def measure_import_curl(s: Setup, tls: XferServer, tls_vdi: str) -> None:
    """Figure 3: ``curl -T`` into xfer against ``curl -T`` into a sink that discards; beside
    it, the same upload over TLS (``curl -k -T``, the same bytes into the TLS server's VDI)."""
    size, d = s.args.size, s.deadline
    url, what, sink = start_sink(s)
    try:
        xfer_argv = curl_put(s.source, s.plain.import_url(s.import_vdi))
        sink_argv = curl_put(s.source, url, auth=False)
        tls_argv = curl_put(s.source, tls.import_url(tls_vdi), insecure=True)

        def tls_once() -> float:
            cache(s.source)
            t = timed(tls_argv, d)
            body = check_curl(t.stdout, shlex.join(tls_argv), up=size)
            if tls_vdi not in body:
                raise BenchError(f"{shlex.join(tls_argv)}: answered {body.strip()[:200]!r}")
            return t.seconds

        def xfer_once() -> float:
            seconds, stdout = import_timing(s, xfer_argv, "curl -T import")
            body = check_curl(stdout, shlex.join(xfer_argv), up=size)
            if s.import_vdi not in body:
                raise BenchError(f"{shlex.join(xfer_argv)}: answered {body.strip()[:200]!r}")
            return seconds

        def sink_once() -> float:
            cache(s.source)
            t = timed(sink_argv, d)
            if s.args.sink == "http":
                check_curl(t.stdout, shlex.join(sink_argv), up=size)
            return t.seconds

        # the floor an import into a VDI on disk cannot go below: the same bytes written into
        # the SR's file system, straight to the disk as an import writes them, and synced
        floor_file = s.plain.vdi_file(s.import_vdi).parent / "bench-floor.bin"
        floor_argv = ["dd", f"if={s.source}", f"of={floor_file}", "bs=4M", "oflag=direct"]
        floor_argv.append("conv=fsync")

        def floor_once() -> float:
            cache(s.source)
            try:
                return timed(floor_argv, d).seconds
            finally:
                floor_file.unlink(missing_ok=True)

        xfer = Figure("curl -T -> xfer", shlex.join(xfer_argv), size)
        peer = Figure("curl -T -> sink", shlex.join(sink_argv), size)
        floor = Figure("dd direct+fsync to SR", shlex.join(floor_argv), size)
        https = Figure("curl -k -T -> xfer https", shlex.join(tls_argv), size)
        contenders = [
            Contender(xfer, xfer_once),
            Contender(peer, sink_once),
            Contender(floor, floor_once),
            Contender(https, tls_once),
        ]
        interleave("curl import", contenders, s.args.runs)
    finally:
        s.procs.stop(sink)
    s.report.notes.append(f"figure 3 sink: {what}")
    slower = max(peer, floor, key=lambda f: f.best)
    s.report.notes.append(
        f"figure 3: the slower of sink and durable write ({slower.name}) takes {slower.best:.3f} s;"
        f" curl -T -> xfer is {slower.best / xfer.best:.2f}x its throughput"
    )
    s.report.notes.append(
        f"figure 3 over TLS: curl -k -T -> xfer https reaches {xfer.median / https.median:.2f}x"
        " the plain import's throughput on medians"
    )
    s.report.figures += [("3 curl import", f) for f in (xfer, peer, floor, https)]
    ratio_target(s.report, "3 raw import (curl client)", xfer, peer, IMPORT_CURL_TARGET)


def measure_sparse(s: Setup) -> None:
    """Figure 4: a 100 GiB VDI holding ``data`` exported as VHD, against a dense VDI of
    ``data`` exported as VHD; both fetched with curl."""
    d, srv = s.deadline, s.plain
    data = QUICK_SIZE if s.args.quick else SPARSE_DATA
    sparse_raw, sparse_vhd = s.workdir / "sparse.raw", s.workdir / "sparse.vhd"
    dense_raw = s.workdir / "dense.raw"
    progress(f"figure 4: sparse raw file, {SPARSE_VIRTUAL // GIB} GiB holding {data // MIB} MiB")
    make_sparse(sparse_raw, SPARSE_VIRTUAL, data)
    run([*s.xfer, "vhd", "convert", str(sparse_raw), str(sparse_vhd)], d)
    sparse_raw.unlink()
    sparse_vdi = srv.vdi_create(SPARSE_VIRTUAL, "bench-sparse", d)
    start = time.perf_counter()
    run(srv.import_argv(sparse_vdi, sparse_vhd, "vhd"), d, xfer_env())
    s.report.notes.append(
        f"figure 4 setup: xfer import --format vhd of a {sparse_vhd.stat().st_size // MIB} MiB "
        f"VHD into the {SPARSE_VIRTUAL // GIB} GiB VDI took {time.perf_counter() - start:.2f} s"
    )
    sparse_vhd.unlink()
    prefix_copy(s.source, dense_raw, data)
    dense_vdi = srv.vdi_create(data, "bench-dense", d)
    run(srv.import_argv(dense_vdi, dense_raw), d, xfer_env())
    dense_raw.unlink()
    files = {sparse_vdi: srv.vdi_file(sparse_vdi), dense_vdi: srv.vdi_file(dense_vdi)}
    sizes: dict[str, int] = {}

    def fetch(uuid: str, argv: list[str]) -> Callable[[], float]:
        def once() -> float:
            cache(files[uuid])
            t = timed(argv, d)
            check_curl(t.stdout, shlex.join(argv))
            sizes[uuid] = int(t.stdout.split()[-2])
            return t.seconds

        return once

    sparse_argv = curl_get(srv.export_url(sparse_vdi, "vhd"))
    dense_argv = curl_get(srv.export_url(dense_vdi, "vhd"))
    sparse = Figure(f"{SPARSE_VIRTUAL // GIB} GiB VDI as vhd", shlex.join(sparse_argv), data)
    dense = Figure(f"{data // MIB} MiB VDI as vhd", shlex.join(dense_argv), data)
    try:
        interleave(
            "sparse vhd export",
            [
                Contender(sparse, fetch(sparse_vdi, sparse_argv)),
                Contender(dense, fetch(dense_vdi, dense_argv)),
            ],
            s.args.runs,
        )
    finally:
        for uuid in (sparse_vdi, dense_vdi):
            srv.vdi_destroy(uuid, d)
    s.report.notes.append(
        f"figure 4: VHD bytes sent: sparse {sizes.get(sparse_vdi, 0)}, "
        f"dense {sizes.get(dense_vdi, 0)} (MiB/s in the table are on the {data // MIB} MiB data)"
    )
    s.report.figures += [("4 sparse vhd", sparse), ("4 sparse vhd", dense)]
    ratio_target(s.report, "4 sparse VHD export", sparse, dense, SPARSE_TARGET, by_time=True)


def measure_rss(s: Setup) -> None:
    """Figure 5: the server's RSS while two exports and two imports run at once."""
    size, d, srv = s.args.size, s.deadline, s.plain
    targets = [srv.vdi_create(size, f"bench-rss-{i}", d) for i in range(2)]
    peaks: list[float] = []
    hwms: list[float] = []
    children: list[float] = []
    try:
        for i in range(s.args.runs):
            os.sync()
            cache(s.source, srv.vdi_file(s.export_vdi))
            base = status_kib(srv.proc.pid, "VmRSS") / 1024
            reset = reset_hwm(srv.proc.pid)
            argvs = [curl_get(srv.export_url(s.export_vdi)) for _ in range(2)]
            argvs += [curl_put(s.source, srv.import_url(u)) for u in targets]
            start = time.perf_counter()
            with RssSampler(srv.proc.pid) as sampler:
                clients = [
                    subprocess.Popen(
                        a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=ROOT
                    )
                    for a in argvs
                ]
                try:
                    outs = [c.communicate(timeout=d.left())[0] for c in clients]
                except subprocess.TimeoutExpired:
                    raise BenchError("figure 5: the concurrent transfers did not finish") from None
                finally:
                    for c in clients:
                        if c.poll() is None:
                            c.kill()
                            c.wait()
            seconds = time.perf_counter() - start
            for a, c, out in zip(argvs, clients, outs, strict=True):
                if c.returncode != 0:
                    raise BenchError(f"{shlex.join(a)} exited with {c.returncode}")
                check_curl(out, shlex.join(a), down=None if "-T" in a else size)
            peak = sampler.peak_kib / 1024
            hwm = status_kib(srv.proc.pid, "VmHWM") / 1024 if reset else float("nan")
            peaks.append(peak)
            hwms.append(hwm)
            children.append(sampler.children_kib / 1024)
            progress(
                f"  rss: run {i + 1}/{s.args.runs}: 4 x {size // MIB} MiB in {seconds:.2f} s "
                f"({4 * size / MIB / seconds:.0f} MiB/s together), RSS before {base:.1f} MiB, "
                f"peak {peak:.1f} MiB ({sampler.samples} samples), VmHWM {hwm:.1f} MiB, "
                f"children's peak {sampler.children_kib / 1024:.1f} MiB"
            )
    finally:
        for u in targets:
            srv.vdi_destroy(u, d)
    peak = max(peaks)
    s.report.targets.append(
        Outcome(
            f"5 server RSS, 2 exports + 2 imports of {size // MIB} MiB at once: "
            f"peak < {RSS_TARGET_MIB:.0f} MiB",
            peak < RSS_TARGET_MIB,
            f"{peak:.1f} MiB (highest sampled VmRSS over {s.args.runs} runs; per run "
            + ", ".join(f"{p:.1f}" for p in peaks)
            + "; VmHWM per run "
            + ", ".join(f"{h:.1f}" for h in hwms)
            + "; children's peak per run "
            + ", ".join(f"{c:.1f}" for c in children)
            + ")",
        )
    )


def verify(s: Setup) -> None:
    """A raw export of the import target hashes like the source (imports wrote it)."""
    argv = ["curl", "-gsSf", "-u", f"root:{PASSWORD}", s.plain.export_url(s.import_vdi)]
    digest = hashlib.sha256()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        while data := proc.stdout.read(CHUNK):
            digest.update(data)
        proc.wait(s.deadline.left())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or digest.hexdigest() != s.source_sha:
        raise BenchError(
            f"check: {shlex.join(argv)} (exit {proc.returncode}) hashes {digest.hexdigest()}, "
            f"the source {s.source_sha}"
        )
    s.report.notes.append("check: a raw export of the import target hashes like the source")


# --- the report ----------------------------------------------------------------------------


def versions() -> list[str]:
    """One line per peer tool: its version."""
    probes = {
        "curl": ["curl", "--version"],
        "nginx": [nginx_binary(), "-v"],
        "iperf3": ["iperf3", "--version"],
        "socat": ["socat", "-V"],
        "openssl": ["openssl", "version"],
    }
    out = []
    for name, argv in probes.items():
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
            line = next((x for x in lines if "version" in x.lower()), lines[0] if lines else "?")
        except (OSError, subprocess.TimeoutExpired):
            line = "not found"
        out.append(f"{name + ':':<9} {line.strip()}")
    return out


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the machine type."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_header(args: argparse.Namespace, workdir: Path, xfer: list[str]) -> None:
    """The machine, the versions and the command line."""
    print("vdi_transfer benchmark: xfer serve's VDI export/import vs nginx, iperf3, a sink")
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine:  nproc {os.cpu_count()}, {cpu_model()}, Linux {platform.release()}")
    print(f"python:   {platform.python_version()} ({sys.executable})")
    print(f"xfer:     {shlex.join(xfer)}")
    for line in versions():
        print(line)
    print(f"dir:      {workdir}")
    print(f"load:     {load()} at the start (other work on the machine skews the timings)")
    print(
        f"runs:     {args.size // MIB} MiB transfers; {args.runs} runs per command, interleaved, "
        "medians judged; os.sync() and the inputs read into the cache before each"
    )
    print(flush=True)


def print_table(report: Report) -> None:
    """The figures, one line per contender."""
    head = ("figure", "contender", "best s", "median s", "MiB/s", "runs s")
    lines = [head]
    for label, f in report.figures:
        lines.append(
            (
                label,
                f.name,
                f"{f.best:.3f}",
                f"{f.median:.3f}",
                f"{f.mib_s:.0f}",
                " ".join(f"{x:.3f}" for x in f.seconds),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, 1, 5) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()


def print_report(report: Report, quick: bool) -> None:
    """The commands, the table, the notes and the targets."""
    if not report.figures and not report.targets:
        return
    print("commands:")
    for label, f in report.figures:
        print(f"  {label}, {f.name}: {f.command}")
    print()
    print(f"load at the end: {load()}")
    print("MiB/s: bytes moved / wall time of the client command (start-up included), best run")
    print()
    print_table(report)
    noisy = [
        f"{label} {f.name}: " + ", ".join(f"{x:.3f}" for x in f.seconds)
        for label, f in report.figures
        if max(f.seconds) > NOISY * min(f.seconds)
    ]
    if noisy:
        print(f"noisy (slowest run > {NOISY:.2f} x fastest):")
        for line in noisy:
            print(f"  {line}")
        print()
    if report.notes:
        print("notes:")
        for line in report.notes:
            print(f"  {line}")
        print()
    if report.targets:
        print("targets:")
        width = max(len(t.name) for t in report.targets)
        for t in report.targets:
            print(f"  {'PASS' if t.met else 'FAIL'}  {t.name:<{width}}  measured {t.value}")
        if quick:
            print("  (--quick: start-up weighs heavily on small transfers; judge on full runs)")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Time xfer's VDI transfers against nginx, iperf3 and a sink, on ::1.",
    )
    parser.add_argument(
        "--size", default=None, help=f"bytes per transfer, K/M/G suffixes (default {DEFAULT_SIZE})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_SIZE // MIB} MiB transfers"
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="runs per command; targets use the median"
    )
    parser.add_argument(
        "--sink",
        choices=("http", "socat"),
        default="http",
        help="figure 3's discarding peer: a tiny HTTP sink (default) or socat via telnet://",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary directory (/tmp)"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"seconds the whole benchmark may take (default {DEFAULT_TIME_LIMIT:.0f})",
    )
    args = parser.parse_args(argv)
    if args.quick and args.size is not None:
        parser.error("--quick and --size exclude each other")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        size = QUICK_SIZE if args.quick else parse_size(args.size or DEFAULT_SIZE)
    except ValueError as e:
        parser.error(str(e))
    if size <= 0 or size % BLOCK:
        parser.error("--size must be a positive multiple of 2 MiB")
    args.size = size
    return args


def missing_tools(sink: str) -> list[str]:
    """The peer tools not installed."""
    tools = ["curl", "iperf3", "openssl"] + (["socat"] if sink == "socat" else [])
    out = [t for t in tools if shutil.which(t) is None]
    if not os.access(nginx_binary(), os.X_OK):
        out.append("nginx")
    return out


def space_needed(size: int, quick: bool) -> int:
    """Bytes of free space the run needs at its peak: the source, the export and import VDIs,
    the TLS server's copy, the two RSS targets with their staged images, the sparse set."""
    data = QUICK_SIZE if quick else SPARSE_DATA
    return 9 * size + 4 * data + 512 * MIB


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit, so that the finally blocks stop the servers."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def setup(
    args: argparse.Namespace,
    workdir: Path,
    procs: Processes,
    deadline: Deadline,
    xfer: list[str],
    report: Report,
) -> Setup:
    """The source file, the plain server with its export and import VDIs."""
    size = args.size
    www = workdir / "www"
    www.mkdir()
    source = www / "disk.raw"
    progress(f"writing {size // MIB} MiB of random data: {source}")
    sha = make_random(source, size)
    plain = start_xfer(procs, xfer, workdir, "plain")
    progress(f"xfer serve: {plain.url} (log {plain.log})")
    export_vdi = plain.vdi_create(size, "bench-export", deadline)
    import_vdi = plain.vdi_create(size, "bench-import", deadline)
    for uuid in (export_vdi, import_vdi):
        start = time.perf_counter()
        run(plain.import_argv(uuid, source), deadline, xfer_env())
        report.notes.append(
            f"setup: first xfer import of {size // MIB} MiB into a fresh VDI: "
            f"{time.perf_counter() - start:.2f} s"
        )
    return Setup(
        args, workdir, procs, deadline, xfer, report, source, sha, plain, export_vdi, import_vdi
    )


def startup(xfer: list[str]) -> float:
    """Median seconds of ``xfer --help``: the interpreter and imports every xfer command pays."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([*xfer, "--help"], stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(args: argparse.Namespace, workdir: Path, procs: Processes, report: Report) -> None:
    """All the figures, in order; servers left for the caller to stop."""
    deadline = Deadline(time.monotonic() + args.time_limit)
    xfer = xfer_command()
    s = setup(args, workdir, procs, deadline, xfer, report)
    cert, key, how = make_cert(workdir, deadline)
    report.notes.append(f"TLS: self-signed P-256 certificate for ::1 made with {how}")
    tls = start_xfer(procs, xfer, workdir, "tls", (cert, key))
    progress(f"xfer serve (TLS): {tls.url}")
    tls_vdi = tls.vdi_create(args.size, "bench-tls", deadline)
    start = time.perf_counter()
    run(tls.import_argv(tls_vdi, s.source), deadline, xfer_env())
    report.notes.append(
        f"setup: xfer import over https of {args.size // MIB} MiB: "
        f"{time.perf_counter() - start:.2f} s"
    )
    report.notes.append(f"xfer start-up (`xfer --help`, median of 3): {startup(xfer):.3f} s")
    nginx_port, nginx_tls_port = start_nginx(procs, workdir, s.source.parent, (cert, key))
    measure_exports(s, tls, tls_vdi, nginx_port, nginx_tls_port)
    measure_import_cli(s)
    measure_import_curl(s, tls, tls_vdi)
    procs.stop(tls.proc)
    measure_sparse(s)
    measure_rss(s)
    verify(s)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 whatever the targets say, 1 if a command or a check fails."""
    args = parse_args(argv)
    missing = missing_tools(args.sink)
    if missing:
        print(f"vdi_transfer: missing {', '.join(missing)} (make bench installs them)")
        return 1
    parent = args.dir or Path(tempfile.gettempdir())
    need, free = space_needed(args.size, args.quick), shutil.disk_usage(parent).free
    if free < need:
        print(
            f"vdi_transfer: {parent} has {free // MIB} MiB free, the run needs {need // MIB} MiB "
            "(use --dir elsewhere, a smaller --size, or --quick)"
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="vdi-bench-", dir=parent))
    procs = Processes()
    report = Report()
    failure = None
    with terminated_as_exit():
        try:
            print_header(args, workdir, xfer_command())
            print(f"space:    {free // MIB} MiB free in {parent}, {need // MIB} MiB needed")
            print(flush=True)
            bench(args, workdir, procs, report)
        except BenchError as e:
            failure = str(e)
        finally:
            procs.stop_all()
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, args.quick)
    if failure:
        print()
        print(f"FAILED: {failure}")
        progress(f"vdi_transfer: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
