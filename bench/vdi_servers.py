"""The servers and peers the VDI transfer benchmark starts, all on ``::1`` (two ``xfer serve``,
nginx, iperf3, the discarding sink), the curl commands that talk to them and the watch kept on
the server's memory. Each process is started here and stopped by its pid."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import ROOT, BenchError, run, tool

PASSWORD = "bench-pw"
SAMPLE_INTERVAL = 0.05
"""Seconds between two RSS samples."""


def free_port() -> int:
    """A TCP port on ::1 that is free right now."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether some socket listens on TCP port ``port`` of ``::1`` (or ``::``)."""
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.laddr.ip in ("::1", "::")
        for c in psutil.net_connections(kind="tcp6")
    )


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log file, on one line."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Wait (up to 10 s) until ``port`` listens; BenchError if ``proc`` dies first."""
    limit = time.monotonic() + 10
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > limit:
            raise BenchError(f"{what} did not start listening on [::1]:{port}: {tail(log)}")
        time.sleep(0.02)


class Processes:
    """The servers started by the benchmark; :meth:`stop_all` ends each one, by its pid."""

    def __init__(self) -> None:
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, what: str, argv: list[str], log: Path, out: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group, stderr to ``log`` and stdout to ``out``
        (to ``log`` too by default)."""
        with open(log, "ab") as err, open(out or log, "ab") as stdout:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=err,
                    cwd=ROOT,
                    start_new_session=True,
                )
            except OSError as e:
                raise BenchError(f"{shlex.join(argv)}: {e.strerror}") from None
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


# --- xfer serve ----------------------------------------------------------------------------


def xfer_env() -> dict[str, str]:
    """The environment of xfer's client commands: the password in ``XFER_PASSWORD``."""
    return {**os.environ, "XFER_PASSWORD": PASSWORD}


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

    def vdi_create(self, size: int, name: str, timeout: float) -> str:
        """A new VDI of ``size`` bytes; its uuid."""
        argv = [*self.xfer, "vdi", "create", *self.host, "--size", str(size), "--name", name]
        return run(argv, timeout, xfer_env()).stdout.strip().split()[-1]

    def vdi_destroy(self, uuid: str, timeout: float) -> None:
        """Remove the VDI ``uuid``."""
        run([*self.xfer, "vdi", "destroy", *self.host, "--vdi", uuid], timeout, xfer_env())

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


def start_xfer(
    procs: Processes,
    xfer: list[str],
    workdir: Path,
    name: str,
    tls: tuple[Path, Path] | None = None,
) -> XferServer:
    """Start ``xfer serve`` on ``[::1]`` (a free port), state in ``workdir/name``; it prints
    the URL it listens on."""
    state = workdir / name
    state.mkdir()
    log, out = workdir / f"{name}.log", workdir / f"{name}.out"
    argv = [*xfer, "serve", "--state-dir", str(state), "--listen", "[::1]:0"]
    argv += ["--password", PASSWORD]
    if tls:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = procs.start(name, argv, log, out)
    limit = time.monotonic() + 30
    while True:
        found = re.search(r"listening on (https?://\[::1\]:\d+)/", out.read_text(errors="replace"))
        if found:
            break
        if proc.poll() is not None or time.monotonic() > limit:
            raise BenchError(f"{shlex.join(argv)} did not start: {tail(log)}")
        time.sleep(0.05)
    return XferServer(proc, found.group(1), state, log, xfer, insecure=tls is not None)


# --- the peers -----------------------------------------------------------------------------


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
    argv = [tool("nginx"), "-p", str(d), "-e", str(d / "err.log"), "-c", str(d / "nginx.conf")]
    proc = procs.start("nginx", argv, d / "out.log")
    for p in (port, tls_port):
        wait_listening(p, proc, "nginx", d / "err.log")
    return port, tls_port


def start_iperf3(procs: Processes, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """``iperf3 -s -1`` on ``[::1]:port``, listening: it serves one test, then exits."""
    log = workdir / "iperf3.log"
    proc = procs.start("iperf3", ["iperf3", "-s", "-1", "-B", "::1", "-p", str(port)], log)
    wait_listening(port, proc, "iperf3 -s", log)
    return proc


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


def start_sink(
    procs: Processes, workdir: Path, kind: str
) -> tuple[str, str, subprocess.Popen[bytes]]:
    """The discarding sink of figure 3, ``kind`` "http" or "socat": (the URL curl uploads to,
    what it is, the process)."""
    port = free_port()
    log = workdir / "sink.log"
    if kind == "socat":
        argv = ["socat", "-u", "-T", "0.05"]
        argv += [f"TCP6-LISTEN:{port},bind=[::1],reuseaddr,fork", "OPEN:/dev/null"]
        what = f"{shlex.join(argv)}, curl speaking telnet:// (the 50 ms idle timeout ends it)"
        url = f"telnet://[::1]:{port}"
    else:
        argv = [sys.executable, "-c", SINK, str(port)]
        what = "a tiny HTTP/1.1 sink in Python (blocking socket, recv_into one 4 MiB buffer)"
        url = f"http://[::1]:{port}/sink"
    proc = procs.start("sink", argv, log)
    wait_listening(port, proc, "the sink", log)
    return url, what, proc


def make_cert(workdir: Path, timeout: float) -> tuple[Path, Path, str]:
    """A self-signed P-256 certificate for ``::1`` (and localhost): (cert, key, how made)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    try:
        from cryptography import x509  # type: ignore[import-not-found]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore
        from cryptography.x509.oid import NameOID  # type: ignore
    except ImportError:
        argv = ["openssl", "req", "-x509", "-newkey", "ec", "-nodes", "-days", "2"]
        argv += ["-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", "/CN=localhost"]
        argv += ["-addext", "subjectAltName=IP:::1,DNS:localhost"]
        run([*argv, "-keyout", str(key), "-out", str(cert)], timeout)
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
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        raise BenchError(f"{what}: unexpected curl output {stdout[-200:]!r}")
    status, got_down, got_up = int(fields[0]), int(fields[1]), int(fields[2])
    if not 200 <= status < 300:
        raise BenchError(f"{what}: HTTP {status}: {body.strip()[:300]}")
    if down is not None and got_down != down:
        raise BenchError(f"{what}: {got_down} bytes downloaded, expected {down}")
    if up is not None and got_up != up:
        raise BenchError(f"{what}: {got_up} bytes uploaded, expected {up}")
    return body


# --- the server's memory -------------------------------------------------------------------


def rss(process: psutil.Process) -> int:
    """The resident set size of ``process`` in bytes (VmRSS), 0 once it is gone."""
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


class RssSampler:
    """Samples the RSS of a process every ``SAMPLE_INTERVAL`` in a thread, and apart from it
    the summed RSS of its descendants (the server runs ``ip`` now and then: between fork and
    exec such a child shows the parent's pages, so adding it in would count them twice)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        """The highest RSS sampled, in bytes."""
        self.children_peak = 0
        """The highest summed RSS of the descendants sampled, in bytes."""
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.process))
            try:
                children = self.process.children(recursive=True)
            except psutil.Error:
                children = []
            self.children_peak = max(self.children_peak, sum(rss(c) for c in children))
            self.samples += 1
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS, writing 5 to its
    ``clear_refs`` (psutil reads no peak RSS on Linux, nor resets it); whether it worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss(pid: int) -> int:
    """The process's peak RSS (VmHWM) in bytes since its last reset; 0 if it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
