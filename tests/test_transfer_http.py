"""``GET /export_raw_vdi`` and ``PUT /import_raw_vdi`` end to end against a real ``xfer serve``
over ``[::1]`` and ``127.0.0.1``: curl as the client, the official XenAPI SDK for the tasks and
VDIs behind the transfers, and hand-driven sockets where a client has to misbehave (stop
mid-body, send slowly, read half an export)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import struct
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import XenAPI

from migrate.formats.chunked import END, chunk_header
from support import (
    PASSWORD,
    SECTOR,
    SIZE,
    Daemon,
    MiB,
    TimeoutTransport,
    bat_of,
    close,
    disk_content,
    failure,
    make_dynamic,
    pattern,
    qemu_raw,
    read_all,
    run,
    running_daemon,
    wait_until_sync,
)

TIMEOUT = 20
"""Longest a curl run or a socket operation may take, in seconds."""
EXPORT = "/export_raw_vdi"
IMPORT = "/import_raw_vdi"
BASIC = ("-u", f"root:{PASSWORD}")
UNALLOCATED = 0xFFFFFFFF

WRITES = [(0, pattern(5000, 1)), (3 * MiB - 7, pattern(MiB + 99, 2)), (SIZE - 512, b"z" * 512)]
CONTENT = disk_content(SIZE, WRITES)
"""What most test VDIs hold: data in every 2 MiB block, zeros between."""
REF = re.compile(r"OpaqueRef:[0-9a-f-]{36}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# HTTP clients


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def line(self) -> str:
        """The one-line error body (``STATUS Phrase: message``), checked to be one line."""
        text = self.body.decode()
        assert text.endswith("\n") and text.count("\n") == 1, text
        assert text.startswith(f"{self.status} "), text
        return text.rstrip("\n")


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-cased) of a response head without its blank line."""
    status_line, *fields = head.decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    assert version.startswith("HTTP/1."), status_line
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


def curl(url: str, *args: str, input: bytes | None = None, out: Path | None = None) -> Response:
    """``curl -g URL ARGS`` (the body into ``out`` if given, where ``-C -`` resumes); the last
    (final) response. Fails the test if curl itself fails."""
    with tempfile.TemporaryDirectory() as tmp:
        body = out or Path(tmp, "body")
        cmd = ["curl", "-g", "-sS", "--max-time", str(TIMEOUT), "-D", "-", "-o", str(body)]
        proc = subprocess.run(
            [*cmd, *args, url], input=input, capture_output=True, timeout=TIMEOUT + 5, check=False
        )
        assert proc.returncode == 0, f"curl {args} {url}: {proc.stderr.decode()}"
        heads = [h for h in proc.stdout.split(b"\r\n\r\n") if h.startswith(b"HTTP/")]
        finals = [parse_head(h) for h in heads if not h.startswith(b"HTTP/1.1 1")]
        assert finals, proc.stdout
        status, headers = finals[-1]
        return Response(status, headers, body.read_bytes() if body.exists() else b"")


class RawClient:
    """HTTP/1.1 by hand on a plain socket: the test decides when each byte goes, or whether
    it goes at all. Every operation times out after TIMEOUT seconds."""

    def __init__(self, address: str, port: int, session: str, *, rcvbuf: int | None = None) -> None:
        self.session = session
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((address, port))
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, method: str, target: str, headers: dict[str, str]) -> None:
        """Send a request head (Host and the session cookie added)."""
        fields = {"Host": "xfer", "Cookie": f"session_id={self.session}", **headers}
        lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Close the connection with a TCP reset instead of an orderly close."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def read(self, n: int) -> bytes:
        """Exactly ``n`` more bytes (fewer only if the server closes)."""
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _next_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before a response head: {self.buffer!r}"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return parse_head(head)

    def interim(self, status: int) -> None:
        """Read the interim response ``status`` (e.g. 100 Continue), which must come next."""
        got = self._next_head()[0]
        assert got == status, got

    def head(self) -> tuple[int, dict[str, str]]:
        """The next final response head (1xx responses skipped)."""
        while True:
            status, headers = self._next_head()
            if status >= 200:
                return status, headers

    def response(self) -> Response:
        """The next whole response (its body framed by Content-Length)."""
        status, headers = self.head()
        return Response(status, headers, self.read(int(headers["content-length"])))


def chunk_encoded(data: bytes, piece: int = MiB) -> bytes:
    """``data`` in HTTP/1.1 chunked transfer coding, with the last chunk."""
    chunks = [data[i : i + piece] for i in range(0, len(data), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def xapi_chunked(pieces: list[tuple[int, bytes]]) -> bytes:
    """xapi's ``chunked=true`` body: each piece as offset/length header and data, then END."""
    return b"".join(chunk_header(offset, len(data)) + data for offset, data in pieces) + END


@dataclass
class Http:
    """The daemon's transfer endpoints as seen from ``address``; requests authenticate with
    the ``session_id`` cookie of ``session`` unless they say otherwise."""

    daemon: Daemon
    address: str
    session: str

    def url(self, path: str, **query: str) -> str:
        encoded = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self.daemon.url(path, self.address) + encoded

    def get(
        self, *args: str, auth: tuple[str, ...] | None = None, out: Path | None = None, **query: str
    ) -> Response:
        """``GET /export_raw_vdi?QUERY`` with curl (``ARGS`` added)."""
        cookie = ("-b", f"session_id={self.session}")
        return curl(self.url(EXPORT, **query), *(cookie if auth is None else auth), *args, out=out)

    def put(
        self, body: bytes | Path, auth: tuple[str, ...] | None = None, **query: str
    ) -> Response:
        """``PUT /import_raw_vdi?QUERY`` with curl: a file's body with its Content-Length,
        bytes through stdin (HTTP chunked)."""
        cookie = ("-b", f"session_id={self.session}")
        args = [
            *(cookie if auth is None else auth),
            "-T",
            str(body) if isinstance(body, Path) else "-",
        ]
        return curl(
            self.url(IMPORT, **query), *args, input=None if isinstance(body, Path) else body
        )

    def export(self, vdi: str, **query: str) -> bytes:
        """The VDI's export (raw unless ``format`` says), checked to be a whole 200 answer."""
        r = self.get(vdi=vdi, **query)
        assert r.status == 200, r.body[:200]
        assert int(r.headers["content-length"]) == len(r.body)
        return r.body

    def raw(self, **options: Any) -> RawClient:
        return RawClient(self.address, self.daemon.port, self.session, **options)


def upload(body: bytes, framing: str, tmp_path: Path) -> bytes | Path:
    """``body`` as :meth:`Http.put` sends it with ``framing``: ``length`` (a file) or
    ``chunked`` (stdin)."""
    if framing == "chunked":
        return body
    path = tmp_path / f"body-{sha(body)[:12]}"
    path.write_bytes(body)
    return path


def start_import(http: Http, vdi: Vdi, body: bytes, sent: int, **query: str) -> RawClient:
    """A raw client that has sent the head of an import of ``body`` into ``vdi`` and its
    first ``sent`` bytes (the caller closes it). It waits for ``100 Continue`` first: the
    server has then claimed the VDI and made the task, so the import is under way."""
    client = http.raw()
    target = f"{IMPORT}?{urllib.parse.urlencode({'vdi': vdi.uuid, **query})}"
    client.request("PUT", target, {"Content-Length": str(len(body)), "Expect": "100-continue"})
    client.interim(100)
    client.send(body[:sent])
    return client


# XenAPI


@dataclass
class Vdi:
    ref: str
    uuid: str


class Xapi:
    """The SDK session the tests inspect the daemon with (VDIs, tasks)."""

    def __init__(self, daemon: Daemon, address: str = "::1") -> None:
        self.session = XenAPI.Session(daemon.url("", address), transport=TimeoutTransport())
        self.session.xenapi.login_with_password("root", PASSWORD, "1.0", "test_transfer_http")
        self.api: Any = self.session.xenapi
        self.sr = self.api.SR.get_by_uuid(daemon.sr)

    @property
    def ref(self) -> str:
        """The session's ref (what ``session_id`` carries)."""
        return str(self.session._session)

    def create(self, size: int = SIZE, sr: str | None = None) -> Vdi:
        record = {"SR": sr or self.sr, "virtual_size": str(size), "name_label": "test"}
        ref = self.api.VDI.create(record)
        return Vdi(ref, self.api.VDI.get_uuid(ref))

    def vdi(self, ref: str) -> Vdi:
        return Vdi(ref, self.api.VDI.get_uuid(ref))

    def tasks(self) -> set[str]:
        return set(self.api.task.get_all())

    def new_task(self, before: set[str], label: str) -> str:
        """The one task named ``label`` that is not in ``before``, once the daemon made it."""

        def made() -> dict[str, Any]:
            records = self.api.task.get_all_records()
            return {
                r: t for r, t in records.items() if r not in before and t["name_label"] == label
            }

        made_since = wait_until_sync(made, what=f"a task {label!r}")
        assert len(made_since) == 1, (label, made_since)
        return next(iter(made_since))

    def task(self, ref: str) -> dict[str, Any]:
        record: dict[str, Any] = self.api.task.get_record(ref)
        return record

    def finished(self, ref: str) -> dict[str, Any]:
        """The task's record once it left pending (and cancelling)."""

        def ended() -> dict[str, Any] | None:
            record = self.task(ref)
            return None if record["status"] in ("pending", "cancelling") else record

        return wait_until_sync(ended, what=f"task {ref} to end")

    def failed(self, ref: str, code: str, *words: str) -> list[str]:
        """The task's error_info, after checking it failed with ``code`` and its description
        mentions each of ``words``."""
        record = self.finished(ref)
        assert record["status"] == "failure", record
        info = list(record["error_info"])
        assert info[0] == code, info
        for word in words:
            assert word in " ".join(info), (word, info)
        return info


def import_label(vdi: Vdi) -> str:
    return f"import_raw_vdi {vdi.uuid}"


def import_failed(
    xapi: Xapi, before: set[str], vdi: Vdi, r: Response, code: str, *words: str
) -> list[str]:
    """The error_info of the import task into ``vdi`` started since ``before``, checked as
    :meth:`Xapi.failed` does; the answer ``r`` must name that task in its ``task-id``."""
    task = xapi.new_task(before, import_label(vdi))
    assert r.headers.get("task-id") == task, r.headers
    return xapi.failed(task, code, *words)


# Fixtures


@pytest.fixture(scope="module")
def xapi(daemon: Daemon) -> Iterator[Xapi]:
    client = Xapi(daemon)
    yield client
    close(client.session)


@pytest.fixture(params=["::1", "127.0.0.1"], ids=["v6", "v4"])
def http(daemon: Daemon, xapi: Xapi, request: pytest.FixtureRequest) -> Http:
    """The endpoints over IPv6 and over IPv4."""
    return Http(daemon, request.param, xapi.ref)


@pytest.fixture
def http6(daemon: Daemon, xapi: Xapi) -> Http:
    """The endpoints over ``[::1]`` only."""
    return Http(daemon, "::1", xapi.ref)


@pytest.fixture(scope="module")
def shared(daemon: Daemon, xapi: Xapi) -> Vdi:
    """A VDI of SIZE bytes holding CONTENT for the whole module: the tests using it only read
    it, or check that what they sent left it as it was."""
    vdi = xapi.create()
    assert Http(daemon, "::1", xapi.ref).put(CONTENT, vdi=vdi.uuid).status == 200
    return vdi


@pytest.fixture
def filled(http6: Http, xapi: Xapi) -> Vdi:
    """A new VDI of SIZE bytes holding CONTENT."""
    vdi = xapi.create()
    assert http6.put(CONTENT, vdi=vdi.uuid).status == 200
    assert http6.export(vdi.uuid) == CONTENT
    return vdi


# 1. Round trips


@pytest.mark.parametrize("fmt", ["raw", "vhd"])
def test_export_headers_and_bytes(http: Http, shared: Vdi, fmt: str, tmp_path: Path) -> None:
    r = http.get(vdi=shared.uuid, format=fmt)
    assert r.status == 200
    assert r.headers["content-length"] == str(len(r.body))
    assert r.headers["content-disposition"] == f'attachment; filename="{shared.uuid}.{fmt}"'
    assert REF.fullmatch(r.headers["task-id"]), r.headers
    if fmt == "raw":
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["accept-ranges"] == "bytes"
        assert r.body == CONTENT
    else:
        assert r.headers["content-type"] == "application/vhd"
        assert "accept-ranges" not in r.headers
        image = tmp_path / "export.vhd"
        image.write_bytes(r.body)
        assert read_all(image) == CONTENT


def test_export_task_succeeds(http6: Http, xapi: Xapi, shared: Vdi) -> None:
    r = http6.get(vdi=shared.ref)  # a ref works as well as a uuid
    assert r.status == 200 and r.body == CONTENT
    record = xapi.finished(r.headers["task-id"])
    assert record["status"] == "success" and record["progress"] == 1.0, record


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("fmt", ["raw", "vhd"])
@pytest.mark.parametrize("into", ["vdi", "sr_id"])
def test_import_round_trip(
    http: Http, xapi: Xapi, fmt: str, framing: str, into: str, tmp_path: Path
) -> None:
    """Raw and VHD bodies, by Content-Length and HTTP chunked, into a VDI and into a new VDI
    of the SR: the export has the digest of the bytes imported, the answer and the task's
    result are the VDI's ref."""
    if fmt == "vhd":
        image = tmp_path / "source.vhd"
        make_dynamic(image, SIZE, WRITES)
        body = image.read_bytes()
    else:
        body = CONTENT
    if into == "vdi":
        target = xapi.create()
        query = {"vdi": target.uuid}
    else:
        query = {"sr_id": xapi.api.SR.get_uuid(xapi.sr), "name_label": "imported"}
    r = http.put(upload(body, framing, tmp_path), format=fmt, **query)
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("text/plain")
    ref = r.body.decode().removesuffix("\n")
    assert r.body.endswith(b"\n") and REF.fullmatch(ref), r.body
    vdi = xapi.vdi(ref)
    if into == "vdi":
        assert vdi == target
    else:
        record = xapi.api.VDI.get_record(ref)
        assert (record["name_label"], int(record["virtual_size"])) == ("imported", SIZE)
    assert sha(http.export(vdi.uuid)) == sha(CONTENT)
    task = xapi.finished(r.headers["task-id"])
    assert (task["status"], task["result"]) == ("success", f"<value>{ref}</value>"), task


def test_raw_import_into_a_new_vdi_rounds_its_size_up(http6: Http, xapi: Xapi) -> None:
    body = CONTENT[: 3 * MiB + 100]
    r = http6.put(body, sr_id=xapi.api.SR.get_uuid(xapi.sr))
    assert r.status == 200, r.body
    vdi = xapi.vdi(r.body.decode().strip())
    assert int(xapi.api.VDI.get_virtual_size(vdi.ref)) == 3 * MiB + 512
    assert http6.export(vdi.uuid) == body + bytes(412)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_xapi_chunked_framing(http: Http, filled: Vdi, framing: str, tmp_path: Path) -> None:
    """``chunked=true``: chunks in any order, at unaligned offsets, each written where its
    header says; the rest of the VDI keeps its content."""
    pieces = [
        (5 * MiB + 3, pattern(MiB, 3)),
        (512, pattern(4096, 4)),
        (SIZE - 1000, pattern(1000, 5)),
        (2 * MiB - 10, pattern(20, 6)),
    ]
    body = xapi_chunked(pieces)
    r = http.put(upload(body, framing, tmp_path), vdi=filled.uuid, chunked="true")
    assert r.status == 200, r.body
    assert http.export(filled.uuid) == disk_content(SIZE, [(0, CONTENT), *pieces])


# 2. Against qemu-img


def test_exported_vhd_reads_the_same_in_qemu_img(
    http6: Http, shared: Vdi, qemu_img: str, tmp_path: Path
) -> None:
    image = tmp_path / "export.vhd"
    image.write_bytes(http6.export(shared.uuid, format="vhd"))
    assert qemu_raw(qemu_img, image, tmp_path / "qemu.raw") == http6.export(shared.uuid)


# 3. A delta


def test_delta_export_and_import(http6: Http, xapi: Xapi, tmp_path: Path) -> None:
    """V holds CONTENT; S = VDI.snapshot(V); 3 MiB of new data go over V's start. V's VHD
    export with ``base=S`` holds only the two blocks that changed, and imported onto a VDI
    holding S's content it gives V."""
    v = xapi.create()
    assert http6.put(CONTENT, vdi=v.uuid).status == 200
    s = xapi.vdi(xapi.api.VDI.snapshot(v.ref))
    new = pattern(3 * MiB, 7)
    assert http6.put(new, vdi=v.uuid).status == 200
    v_raw = http6.export(v.uuid)
    assert v_raw == new + CONTENT[len(new) :]
    assert http6.export(s.uuid) == CONTENT

    full = http6.export(v.uuid, format="vhd")
    delta = tmp_path / "delta.vhd"
    delta.write_bytes(http6.export(v.uuid, format="vhd", base=s.uuid))
    assert delta.stat().st_size < len(full)
    allocated = [i for i, entry in enumerate(bat_of(delta)) if entry != UNALLOCATED]
    assert allocated == [0, 1]

    fresh = xapi.create()
    assert http6.put(http6.export(s.uuid), vdi=fresh.uuid).status == 200
    r = http6.put(delta, vdi=fresh.uuid, format="vhd")
    assert r.status == 200, r.body
    assert http6.export(fresh.uuid) == v_raw


# 4. Atomicity: every failure leaves the VDI as it was


@pytest.mark.parametrize(
    ("framing", "end"), [("length", "close"), ("chunked", "close"), ("length", "reset")]
)
def test_connection_cut_mid_body(
    http: Http, xapi: Xapi, filled: Vdi, framing: str, end: str
) -> None:
    """The client sends half the body, then closes (or resets) the connection: the VDI keeps
    its content and the task fails naming the short body."""
    body = pattern(SIZE, 8)
    before = xapi.tasks()
    with http.raw() as client:
        if framing == "length":
            client.request("PUT", f"{IMPORT}?vdi={filled.uuid}", {"Content-Length": str(SIZE)})
            client.send(body[: SIZE // 2])
        else:
            client.request("PUT", f"{IMPORT}?vdi={filled.uuid}", {"Transfer-Encoding": "chunked"})
            client.send(chunk_encoded(body)[: SIZE // 2])
        task = xapi.new_task(before, import_label(filled))
        if end == "reset":
            client.reset()
    assert http.export(filled.uuid) == CONTENT
    info = xapi.failed(task, "IMPORT_ERROR")
    if (framing, end) == ("length", "close"):
        assert f"ended after {SIZE // 2} of {SIZE} bytes" in info[1], info


def corrupt_vhd(path: Path, writes: list[tuple[int, bytes]]) -> bytes:
    """A dynamic VHD of SIZE holding ``writes`` whose dynamic header cookie (offset 512) is
    wrong."""
    make_dynamic(path, SIZE, writes)
    data = bytearray(path.read_bytes())
    data[512:520] = b"notspars"
    return bytes(data)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_malformed_vhd_names_field_and_offset(
    http: Http, xapi: Xapi, filled: Vdi, framing: str, tmp_path: Path
) -> None:
    body = corrupt_vhd(tmp_path / "bad.vhd", [])  # metadata only: a few KiB
    before = xapi.tasks()
    r = http.put(upload(body, framing, tmp_path), vdi=filled.uuid, format="vhd")
    assert r.status == 400
    line = r.line()
    assert line.startswith("400 Bad Request: malformed vhd body: "), line
    assert "cookie" in line and "offset 512" in line, line
    import_failed(xapi, before, filled, r, "IMPORT_ERROR", "cookie", "offset 512")
    assert http.export(filled.uuid) == CONTENT


def test_malformed_vhd_answered_before_the_body_ends(
    http6: Http, xapi: Xapi, filled: Vdi, tmp_path: Path
) -> None:
    """The 400 comes once the server has read enough of a large malformed body to see the
    fault; the client need not send the rest."""
    body = corrupt_vhd(tmp_path / "bad.vhd", WRITES)
    sent = 4 * MiB + 4096  # past the server's first receive buffer
    assert len(body) > sent
    with start_import(http6, filled, body, sent, format="vhd") as client:
        r = client.response()
    assert r.status == 400 and "offset 512" in r.line(), r.body
    assert http6.export(filled.uuid) == CONTENT


def test_truncated_vhd_is_malformed(http6: Http, xapi: Xapi, filled: Vdi, tmp_path: Path) -> None:
    """A VHD body that stops before its trailing footer (the HTTP body itself is whole)."""
    image = tmp_path / "short.vhd"
    make_dynamic(image, SIZE, WRITES)
    r = http6.put(image.read_bytes()[:-512], vdi=filled.uuid, format="vhd")
    assert r.status == 400, r.body
    assert "footer" in r.line(), r.line()
    assert http6.export(filled.uuid) == CONTENT


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_body_larger_than_the_vdi(
    http: Http, xapi: Xapi, filled: Vdi, framing: str, tmp_path: Path
) -> None:
    """413 whether the Content-Length says it up front or a chunked body runs past the end."""
    before = xapi.tasks()
    r = http.put(upload(pattern(SIZE + 512, 9), framing, tmp_path), vdi=filled.uuid)
    assert r.status == 413, r.body
    assert str(SIZE) in r.line(), r.line()
    import_failed(xapi, before, filled, r, "VDI_TOO_SMALL", filled.ref)
    assert http.export(filled.uuid) == CONTENT


def test_vhd_larger_than_the_vdi(http6: Http, xapi: Xapi, filled: Vdi, tmp_path: Path) -> None:
    image = tmp_path / "big.vhd"
    make_dynamic(image, 2 * SIZE, [(SIZE + 4096, b"past the end")])
    r = http6.put(image, vdi=filled.uuid, format="vhd")
    assert r.status == 413, r.body
    assert str(2 * SIZE) in r.line(), r.line()
    assert http6.export(filled.uuid) == CONTENT


def test_cancelled_task(http: Http, xapi: Xapi, filled: Vdi) -> None:
    """A client task passed as ``task_id``, cancelled while the client trickles the body:
    the task ends ``cancelled``, the client gets 409 and the VDI keeps its content."""
    task = xapi.api.task.create("my import", "")
    body = pattern(SIZE, 10)
    with start_import(http, filled, body, MiB, task_id=task) as client:
        for offset in range(MiB, 2 * MiB, 64 * 1024):  # slowly
            client.send(body[offset : offset + 64 * 1024])
            time.sleep(0.01)
        xapi.api.task.cancel(task)
        r = client.response()
    assert r.status == 409 and "cancelled" in r.line(), r.body
    record = xapi.finished(task)
    assert (record["status"], record["progress"]) == ("cancelled", 1.0), record
    assert http.export(filled.uuid) == CONTENT


def test_connection_kept_alive_after_an_import(http: Http, filled: Vdi) -> None:
    """An import's body is read past h11; the connection then goes on with the next request,
    even one sent in the same write as the body's end, and an HTTP/1.0 client's is closed."""
    body = pattern(SIZE, 18)
    target = f"{IMPORT}?{urllib.parse.urlencode({'vdi': filled.uuid})}"
    with http.raw() as client:
        client.request("PUT", target, {"Content-Length": str(len(body))})
        head = f"GET {EXPORT}?vdi={filled.uuid} HTTP/1.1\r\nHost: xfer\r\n"
        cookie = f"Cookie: session_id={client.session}\r\n\r\n"
        client.send(body + (head + cookie).encode())
        assert client.response().status == 200
        exported = client.response()
        assert (exported.status, exported.body) == (200, body)
    with http.raw() as client:
        client.sock.sendall(
            f"PUT {target} HTTP/1.0\r\nContent-Length: 4096\r\n"
            f"Cookie: session_id={client.session}\r\n\r\n".encode()
            + body[:4096]
        )
        assert client.response().status == 200
        assert client.sock.recv(1) == b""  # closed


@pytest.mark.slow
def test_second_writer_is_refused(http: Http, xapi: Xapi, filled: Vdi) -> None:
    """While one import is mid-body another into the same VDI gets 409 VDI_IN_USE; the first
    then completes."""
    body = pattern(SIZE, 11)
    with start_import(http, filled, body, SIZE // 2) as first:
        r = http.put(pattern(4096, 12), vdi=filled.uuid)
        assert r.status == 409 and "VDI_IN_USE" in r.line(), r.body
        first.send(body[SIZE // 2 :])
        assert first.response().status == 200
    assert http.export(filled.uuid) == body


def test_second_writer_waits_for_the_first(http: Http, filled: Vdi) -> None:
    """An import into a VDI another import is writing waits for that one to end (neither
    100 Continue nor 409 meanwhile), then goes ahead."""
    first_body, second_body = pattern(SIZE, 11), pattern(SIZE, 12)
    with start_import(http, filled, first_body, SIZE // 2) as first, http.raw() as second:
        target = f"{IMPORT}?vdi={filled.uuid}"
        second.request("PUT", target, {"Content-Length": str(SIZE), "Expect": "100-continue"})
        second.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.sock.recv(1)
        second.sock.settimeout(TIMEOUT)
        first.send(first_body[SIZE // 2 :])
        assert first.response().status == 200
        second.interim(100)
        second.send(second_body)
        assert second.response().status == 200
    assert http.export(filled.uuid) == second_body


@pytest.mark.slow
def test_upload_right_after_an_empty_probe(http: Http, filled: Vdi, tmp_path: Path) -> None:
    """Xen Orchestra's import of a VHD of unknown length: an empty PUT declaring 1 PiB,
    answered 200 at once and closed by the client, then at once the VHD, declaring 1 PiB
    too, the client's sending side closed after the footer. Each upload lands whole, also
    when it starts while its probe is still ending."""
    target = f"{IMPORT}?vdi={filled.uuid}&format=vhd"
    declared = {"Content-Length": str(1 << 50)}
    for seed in range(30, 35):
        body = pattern(SIZE, seed)
        image = tmp_path / f"upload-{seed}.vhd"
        make_dynamic(image, SIZE, [(0, body)])
        with http.raw() as probe:
            probe.request("PUT", target, declared)
            assert probe.head()[0] == 200
        with http.raw() as upload:
            upload.request("PUT", target, declared)
            upload.send(image.read_bytes())
            assert upload.head()[0] == 200
            upload.sock.shutdown(socket.SHUT_WR)
            assert REF.search(upload.read(1000).decode())  # the VDI's ref, chunked
        assert http.export(filled.uuid) == body


def test_export_during_an_import_reads_the_old_content(
    http: Http, filled: Vdi, tmp_path: Path
) -> None:
    """Raw and VHD exports made while an import is all but complete give the old content."""
    body = pattern(SIZE, 13)
    image = tmp_path / "during.vhd"
    with start_import(http, filled, body, SIZE - 4096) as importing:
        assert http.export(filled.uuid) == CONTENT
        image.write_bytes(http.export(filled.uuid, format="vhd"))
        importing.send(body[SIZE - 4096 :])
        assert importing.response().status == 200
    assert read_all(image) == CONTENT
    assert http.export(filled.uuid) == body


def test_destroy_and_snapshot_during_an_import(http: Http, xapi: Xapi, filled: Vdi) -> None:
    body = pattern(SIZE, 14)
    with start_import(http, filled, body, SIZE // 2) as importing:
        assert failure(lambda: xapi.api.VDI.destroy(filled.ref))[0] == "VDI_IN_USE"
        assert failure(lambda: xapi.api.VDI.snapshot(filled.ref))[0] == "VDI_IN_USE"
        importing.send(body[SIZE // 2 :])
        assert importing.response().status == 200
    assert http.export(filled.uuid) == body
    xapi.api.VDI.destroy(filled.ref)  # free again


def test_a_new_vdi_refused_for_its_task_leaves_nothing(
    http6: Http, xapi: Xapi, daemon: Daemon
) -> None:
    """An sr_id import whose task_id names no pending task is refused (400) before any byte,
    and the new VDI's row it had begun is gone again, not left for the next start."""
    r = http6.put(pattern(4096, 22), sr_id=xapi.api.SR.get_uuid(xapi.sr), task_id=UNKNOWN_SESSION)
    assert r.status == 400 and "task_id" in r.line(), r.line()
    db = sqlite3.connect(f"file:{daemon.state / 'xfer.db'}?mode=ro", uri=True)
    try:
        creating = db.execute("SELECT count(*) FROM vdi WHERE state = 'creating'").fetchone()
    finally:
        db.close()
    assert creating == (0,)


def test_a_snapshot_is_never_written(http: Http, xapi: Xapi, filled: Vdi) -> None:
    """A snapshot is a point in time that delta backups rely on: an import into it is
    refused (409, naming why), and it keeps its content."""
    snapshot = xapi.vdi(xapi.api.VDI.snapshot(filled.ref))
    before = xapi.tasks()
    r = http.put(pattern(SIZE, 41), vdi=snapshot.uuid)
    assert r.status == 409, r.body
    assert "is a snapshot" in r.line() and "OPERATION_NOT_ALLOWED" in r.line(), r.line()
    assert xapi.tasks() == before  # refused before any task was made
    assert http.export(snapshot.uuid) == CONTENT
    assert http.export(filled.uuid) == CONTENT


def vhd_of_size(path: Path, size: int) -> bytes:
    """A dynamic VHD whose footers declare a virtual ``size`` that is not a whole number of
    sectors (as a careless tool may write), holding 0x11 in its first sector."""
    make_dynamic(path, SECTOR * (-(-size // SECTOR)), [(0, b"\x11" * SECTOR)])
    data = bytearray(path.read_bytes())
    for at in (0, len(data) - SECTOR):
        footer = bytearray(data[at : at + SECTOR])
        footer[48:56] = size.to_bytes(8, "big")
        footer[64:68] = bytes(4)
        checksum = ~sum(footer) & 0xFFFFFFFF
        footer[64:68] = checksum.to_bytes(4, "big")
        data[at : at + SECTOR] = footer
    return bytes(data)


def test_recorded_size_is_what_the_file_holds(http6: Http, xapi: Xapi, tmp_path: Path) -> None:
    """A new VDI from a VHD that declares a size of 1000 bytes records what its file reads
    and exports: whole sectors, 1024 (``VDI.create`` refuses such a size outright)."""
    path = tmp_path / "odd.vhd"
    path.write_bytes(vhd_of_size(path, 1000))
    r = http6.put(path, sr_id=xapi.api.SR.get_uuid(xapi.sr), format="vhd")
    assert r.status == 200, r.body
    vdi = xapi.vdi(r.body.decode().strip())
    assert failure(lambda: xapi.create(1000))[:2] == ["INVALID_VALUE", "virtual_size"]
    recorded = int(xapi.api.VDI.get_virtual_size(vdi.ref))
    exported = http6.export(vdi.uuid)
    assert recorded == len(exported) == 1024
    assert read_all(Path(http6.daemon.sr_dir) / f"{vdi.uuid}.vhd")[:1] in (b"\0", b"\x11")
    xapi.api.VDI.destroy(vdi.ref)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on the new directory ``path`` (skip if it cannot be)."""
    path.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "xfer-test", str(path)]
    proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        run("umount", str(path), timeout=TIMEOUT)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


@pytest.mark.slow
@pytest.mark.root
def test_full_disk(tmp_path: Path) -> None:
    """A second daemon with an SR on a 16 MiB tmpfs: a 24 MiB body of random bytes fills it,
    the client gets 507, the task SR_FULL, and the VDI and the free space are as before."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs of a full SR needs root")
    (tmp_path / "daemon").mkdir()
    with (
        tmpfs(tmp_path / "small", "16m") as small,
        running_daemon(tmp_path / "daemon", "--sr", str(small)) as daemon,
    ):
        xapi = Xapi(daemon)
        try:
            label = f"Local storage at {os.path.realpath(small)}"
            (sr,) = xapi.api.SR.get_by_name_label(label)
            vdi = xapi.create(4 * SIZE, sr)
            http = Http(daemon, "::1", xapi.ref)
            first = pattern(2 * MiB, 15)
            assert http.put(first, vdi=vdi.uuid).status == 200
            free = free_bytes(small)
            before = xapi.tasks()
            r = http.put(upload(pattern(3 * SIZE, 16), "length", tmp_path), vdi=vdi.uuid)
            assert r.status == 507, r.body
            assert "full" in r.line(), r.line()
            import_failed(xapi, before, vdi, r, "SR_FULL", sr)
            assert http.export(vdi.uuid) == first + bytes(4 * SIZE - len(first))
            assert os.listdir(small) == [f"{vdi.uuid}.vhd"]  # the staged file went
            # no space kept (the first import's old file may be freed only now: more)
            assert free_bytes(small) >= free
        finally:
            close(xapi.session)


# 5. Authentication

UNKNOWN_SESSION = "OpaqueRef:00000000-0000-0000-0000-000000000000"
AUTH_CASES = {
    "none": 401,
    "wrong-password": 401,
    "bad-session-query": 401,
    "bad-session-cookie": 401,
    "session-query": 200,
    "session-cookie": 200,
    "basic": 200,
}


def credentials(case: str, xapi: Xapi) -> tuple[tuple[str, ...], dict[str, str]]:
    """The curl arguments and query parameters that present the credentials of ``case``."""
    session = UNKNOWN_SESSION if case.startswith("bad-") else xapi.ref
    if case.endswith("-query"):
        return (), {"session_id": session}
    if case.endswith("-cookie"):
        return ("-b", f"session_id={session}"), {}
    return {"none": (), "wrong-password": ("-u", "root:wrong"), "basic": BASIC}[case], {}


@pytest.mark.parametrize("case", list(AUTH_CASES))
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_authentication(http: Http, xapi: Xapi, filled: Vdi, method: str, case: str) -> None:
    auth, query = credentials(case, xapi)
    body = pattern(4096, 17)
    if method == "GET":
        r = http.get(auth=auth, vdi=filled.uuid, **query)
    else:
        r = http.put(body, auth=auth, vdi=filled.uuid, **query)
    assert r.status == AUTH_CASES[case], r.body
    if r.status == 401:
        assert r.headers["www-authenticate"] == 'Basic realm="xapi"'
        assert r.line().startswith("401 Unauthorized: "), r.line()
    elif method == "GET":
        assert r.body == CONTENT
    expected = body + CONTENT[len(body) :] if (method, r.status) == ("PUT", 200) else CONTENT
    assert http.export(filled.uuid) == expected


def test_basic_credentials_verified_once_still_check_the_password(http: Http, shared: Vdi) -> None:
    """Right Basic credentials are remembered for a minute (no password hash per request),
    by user and password together: a wrong password right after is still refused."""
    for auth, status in [(BASIC, 200), (BASIC, 200), (("-u", "root:wrong"), 401), (BASIC, 200)]:
        r = http.get(auth=auth, vdi=shared.uuid)
        assert r.status == status, r.body[:200]


# 6. Ranges and resuming


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("1000-4999", 1000, 5000),
        (f"{SIZE - 100}-", SIZE - 100, SIZE),
        ("-300", SIZE - 300, SIZE),
        (f"{3 * MiB}-{SIZE + 50}", 3 * MiB, SIZE),
        ("0-0", 0, 1),
    ],
)
def test_range(http: Http, shared: Vdi, spec: str, start: int, stop: int) -> None:
    r = http.get("-r", spec, vdi=shared.uuid)
    assert r.status == 206, r.body[:200]
    assert r.headers["content-range"] == f"bytes {start}-{stop - 1}/{SIZE}"
    assert r.headers["content-length"] == str(stop - start)
    assert r.body == CONTENT[start:stop]


@pytest.mark.parametrize(
    ("spec", "start"),
    [("0-" + "9" * 5000, 0), ("-" + "9" * 5000, 0), ("100-" + "0" * 30 + "199", 100)],
)
def test_range_of_thousands_of_digits(http: Http, shared: Vdi, spec: str, start: int) -> None:
    """Numbers in a range have no size limit (RFC 9110): ones past any offset mean the end
    of the disk, never a 500."""
    r = http.get("-H", f"Range: bytes={spec}", vdi=shared.uuid)
    assert r.status == 206, r.line()
    stop = 200 if start == 100 else SIZE
    assert r.body == CONTENT[start:stop]


@pytest.mark.parametrize(
    "spec", [f"{SIZE}-", f"{SIZE + 1000}-{SIZE + 2000}", "-0", "9" * 5000 + "-"]
)
def test_range_past_the_end(http: Http, xapi: Xapi, shared: Vdi, spec: str) -> None:
    r = http.get("-H", f"Range: bytes={spec}", vdi=shared.uuid)
    assert r.status == 416, r.body[:200]
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    assert r.line() == f"416 Requested Range Not Satisfiable: range not within {SIZE} bytes"
    xapi.failed(r.headers["task-id"], "INVALID_VALUE", "range")


BIG = 64 * MiB
"""A VDI larger than what the kernel buffers on loopback, so that an export can be cut."""
BIG_PIECES = [
    (0, pattern(MiB, 18)),
    (BIG // 2 - 5000, pattern(10000, 19)),
    (BIG - 4096, b"e" * 4096),
]


@pytest.fixture(scope="module")
def big(daemon: Daemon, xapi: Xapi) -> Vdi:
    """A VDI of 64 MiB with data at its start, middle and end."""
    vdi = xapi.create(BIG)
    r = Http(daemon, "::1", xapi.ref).put(xapi_chunked(BIG_PIECES), vdi=vdi.uuid, chunked="true")
    assert r.status == 200, r.body
    return vdi


def read_half(http: Http, vdi: Vdi) -> tuple[bytes, str]:
    """The first half of the raw export of ``vdi`` read off a socket that is then closed,
    and the export's task."""
    with http.raw(rcvbuf=64 * 1024) as client:
        client.request("GET", f"{EXPORT}?vdi={vdi.uuid}", {})
        status, headers = client.head()
        assert (status, headers["content-length"]) == (200, str(BIG)), headers
        return client.read(BIG // 2), headers["task-id"]


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["socket", "range"])
def test_cut_export_resumes(http: Http, xapi: Xapi, big: Vdi, cut: str, tmp_path: Path) -> None:
    """An export cut half-way (by a client that closes, or as a ``curl -r`` prefix) and
    resumed by ``curl -C -`` is the whole export. The cut export's task fails."""
    out = tmp_path / "export.raw"
    if cut == "socket":
        half, task = read_half(http, big)
        out.write_bytes(half)
        xapi.failed(task, "VDI_IO_ERROR", "export stopped after")
    else:
        r = http.get("-r", f"0-{BIG // 2 - 1}", vdi=big.uuid, out=out)
        assert r.status == 206 and out.stat().st_size == BIG // 2
    r = http.get("-C", "-", vdi=big.uuid, out=out)
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes {BIG // 2}-{BIG - 1}/{BIG}"
    assert sha(out.read_bytes()) == sha(disk_content(BIG, BIG_PIECES))


# 7. Progress


@pytest.mark.slow
def test_progress_moves_during_a_slow_import(http: Http, xapi: Xapi) -> None:
    """A client sending 16 MiB in 1 MiB pieces 0.1 s apart: the task (found by its name
    while it runs) shows progress between 0 and 1, never going back, then success at 1 with
    the VDI's ref as result."""
    vdi = xapi.create(2 * SIZE)
    body = pattern(2 * SIZE, 20)
    before = xapi.tasks()
    seen: list[float] = []
    with start_import(http, vdi, body, 0) as client:
        task = xapi.new_task(before, import_label(vdi))
        for offset in range(0, len(body), MiB):
            client.send(body[offset : offset + MiB])
            time.sleep(0.1)  # a slow client, on purpose
            seen.append(float(xapi.task(task)["progress"]))
        r = client.response()
    assert r.status == 200, r.body
    assert any(0 < p < 1 for p in seen), seen
    assert seen == sorted(seen), seen
    record = xapi.finished(task)
    assert (record["status"], record["progress"]) == ("success", 1.0), record
    assert record["result"] == f"<value>{vdi.ref}</value>"
    assert http.export(vdi.uuid) == body


# 8. Bad parameters

UNKNOWN = "00000000-0000-4000-8000-000000000000"
BAD_PARAMETERS = [
    ("GET", {}, 400, "parameter vdi missing"),
    ("GET", {"vdi": "{vdi}", "format": "qcow2"}, 400, "format=qcow2"),
    ("GET", {"vdi": UNKNOWN}, 404, f"vdi={UNKNOWN}"),
    ("GET", {"vdi": "{vdi}", "format": "vhd", "base": UNKNOWN}, 404, f"base={UNKNOWN}"),
    ("PUT", {}, 400, "vdi and sr_id"),
    ("PUT", {"vdi": "{vdi}", "sr_id": "{sr}"}, 400, "vdi and sr_id"),
    ("PUT", {"vdi": "{vdi}", "format": "qcow2"}, 400, "format=qcow2"),
    ("PUT", {"vdi": "{vdi}", "format": "vhd", "chunked": "true"}, 400, "chunked=true"),
    ("PUT", {"vdi": UNKNOWN}, 404, f"vdi={UNKNOWN}"),
    ("PUT", {"sr_id": UNKNOWN}, 404, f"sr_id={UNKNOWN}"),
    ("PUT", {"vdi": "{vdi}", "task_id": UNKNOWN_SESSION}, 400, "task_id"),
]


@pytest.mark.parametrize(
    ("method", "query", "status", "text"),
    BAD_PARAMETERS,
    ids=[f"{m}-{'&'.join(f'{k}={v}' for k, v in q.items())}" for m, q, _, _ in BAD_PARAMETERS],
)
def test_bad_parameters(
    http6: Http,
    xapi: Xapi,
    shared: Vdi,
    method: str,
    query: dict[str, str],
    status: int,
    text: str,
) -> None:
    """Each refused with one line naming the parameter; the VDI untouched."""
    sr = xapi.api.SR.get_uuid(xapi.sr)
    values = {k: v.format(vdi=shared.uuid, sr=sr) for k, v in query.items()}
    r = http6.get(**values) if method == "GET" else http6.put(pattern(4096, 21), **values)
    assert r.status == status, r.body
    assert text in r.line(), r.line()
    assert http6.export(shared.uuid) == CONTENT
