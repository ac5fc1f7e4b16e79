"""The figures of the VDI transfer benchmark: each one xfer against its peer, interleaved, and
beside them the floor that bounds the figure on this machine, with a note naming the stage that
limits it. Each figure adds its contenders, notes and target to the report."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import (
    BLOCK,
    CHUNK,
    GIB,
    MIB,
    ROOT,
    BenchError,
    Outcome,
    cache,
    make_random,
    make_sparse,
    progress,
    run,
)
from vdi_harness import Contender, Deadline, Figure, Report, interleave, ratio_target
from vdi_servers import (
    PASSWORD,
    Processes,
    RssSampler,
    XferServer,
    check_curl,
    curl_get,
    curl_put,
    free_port,
    peak_rss,
    reset_peak_rss,
    rss,
    start_iperf3,
    start_sink,
    start_xfer,
    xfer_env,
)

SPARSE_VIRTUAL = 100 * GIB
"""Virtual size of the sparse VDI (figure 4), also with --quick: holes cost nothing to make."""
SPARSE_DATA = 1 * GIB
"""Data the sparse VDI holds, and the size of the dense VDI it is compared with."""

EXPORT_TARGET = 1.0
IMPORT_IPERF_TARGET = 0.8
IMPORT_CURL_TARGET = 0.9
SPARSE_TARGET = 1.3
RSS_TARGET_MIB = 150.0
TLS_TARGET = 0.5


@dataclass
class Setup:
    """What the figures share: the source file and the plain server with its two VDIs."""

    args: argparse.Namespace
    workdir: Path
    procs: Processes
    deadline: Deadline
    xfer: list[str]
    report: Report
    sparse_data: int
    """The data of figure 4's VDIs."""
    source: Path
    source_sha: str
    plain: XferServer
    export_vdi: str
    import_vdi: str


def setup(
    args: argparse.Namespace,
    workdir: Path,
    procs: Processes,
    deadline: Deadline,
    xfer: list[str],
    report: Report,
    sparse_data: int,
) -> Setup:
    """The source file (``--size`` random bytes), the plain server, and its export and import
    VDIs each holding the source."""
    size = args.size
    www = workdir / "www"
    www.mkdir()
    source = www / "disk.raw"
    progress(f"writing {size // MIB} MiB of random data: {source}")
    sha = make_random(source, size)
    plain = start_xfer(procs, xfer, workdir, "plain")
    progress(f"xfer serve: {plain.url} (log {plain.log})")
    export_vdi = plain.vdi_create(size, "bench-export", deadline.left())
    import_vdi = plain.vdi_create(size, "bench-import", deadline.left())
    for uuid in (export_vdi, import_vdi):
        done = run(plain.import_argv(uuid, source), deadline.left(), xfer_env())
        report.notes.append(
            f"setup: first xfer import of {size // MIB} MiB into a fresh VDI: {done.seconds:.2f} s"
        )
    return Setup(
        args,
        workdir,
        procs,
        deadline,
        xfer,
        report,
        sparse_data,
        source,
        sha,
        plain,
        export_vdi,
        import_vdi,
    )


def start_tls(s: Setup, cert: tuple[Path, Path]) -> tuple[XferServer, str]:
    """The server of figure 6 (``--tls-cert/--tls-key``) with a VDI holding the source, which
    it got over https: (the server, the VDI)."""
    tls = start_xfer(s.procs, s.xfer, s.workdir, "tls", cert)
    progress(f"xfer serve (TLS): {tls.url}")
    tls_vdi = tls.vdi_create(s.args.size, "bench-tls", s.deadline.left())
    done = run(tls.import_argv(tls_vdi, s.source), s.deadline.left(), xfer_env())
    s.report.notes.append(
        f"setup: xfer import over https of {s.args.size // MIB} MiB: {done.seconds:.2f} s"
    )
    return tls, tls_vdi


def measure_exports(
    s: Setup, tls: XferServer, tls_vdi: str, nginx_port: int, nginx_tls_port: int
) -> None:
    """Figures 1 and 6: curl from nginx and from xfer, over HTTP and over HTTPS, interleaved.
    nginx over HTTPS is no target's peer: it is figure 6's floor, what curl receives over TLS
    here at all."""
    size, d = s.args.size, s.deadline
    plain_file, tls_file = s.plain.vdi_file(s.export_vdi), tls.vdi_file(tls_vdi)

    def fetch(argv: list[str], *cached: Path) -> Callable[[], float]:
        def once() -> float:
            cache(*cached)
            done = run(argv, d.left())
            check_curl(done.stdout, shlex.join(argv), down=size)
            return done.seconds

        return once

    nginx_argv = curl_get(f"http://[::1]:{nginx_port}/{s.source.name}", auth=False)
    xfer_argv = curl_get(s.plain.export_url(s.export_vdi))
    tls_argv = curl_get(tls.export_url(tls_vdi), insecure=True)
    nginx_tls_argv = curl_get(
        f"https://[::1]:{nginx_tls_port}/{s.source.name}", auth=False, insecure=True
    )
    nginx = Figure(name="nginx -> curl", command=shlex.join(nginx_argv), size=size)
    plain = Figure(name="xfer http -> curl", command=shlex.join(xfer_argv), size=size)
    https = Figure(name="xfer https -> curl -k", command=shlex.join(tls_argv), size=size)
    nginx_https = Figure(
        name="nginx https -> curl -k", command=shlex.join(nginx_tls_argv), size=size
    )
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
    own account of it (body received in, image finished in) goes into the notes, to tell the
    server's time from the client's."""
    s.plain.new_log()
    cache(s.source)
    done = run(argv, s.deadline.left(), xfer_env())
    log, limit = "", time.monotonic() + 2  # the server logs it just after answering
    while not (found := ACCOUNT.findall(log)) and time.monotonic() < limit:
        time.sleep(0.02)
        log += s.plain.new_log()
    if found:
        got, fin = found[-1]
        s.report.notes.append(f"{kind}: server says body received in {got} s, finished in {fin} s")
    return done.seconds, done.stdout


def measure_import_cli(s: Setup) -> None:
    """Figure 2: ``xfer import`` against one iperf3 stream of the same bytes; its floor is
    OpenSSL's sha256 of the file, which the client computes over every byte it sends."""
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
        server = start_iperf3(s.procs, s.workdir, port)
        try:
            seconds = run(iperf_argv, d.left()).seconds
            server.wait(10)
            return seconds
        finally:
            s.procs.stop(server)

    hash_argv = ["openssl", "dgst", "-sha256", str(s.source)]

    def hash_once() -> float:
        cache(s.source)
        return run(hash_argv, d.left()).seconds

    xfer = Figure(name="xfer import", command=shlex.join(xfer_argv), size=size)
    iperf = Figure(name="iperf3 one stream", command=shlex.join(iperf_argv), size=size)
    hashing = Figure(name="openssl sha256", command=shlex.join(hash_argv), size=size)
    contenders = [Contender(xfer, xfer_once), Contender(iperf, iperf_once)]
    interleave("raw import", [*contenders, Contender(hashing, hash_once)], s.args.runs)
    s.report.figures += [("2 xfer import", f) for f in (xfer, iperf, hashing)]
    ratio_target(s.report, "2 raw import (xfer client)", xfer, iperf, IMPORT_IPERF_TARGET)
    s.report.notes.append(
        f"figure 2: sha256 alone reaches {iperf.median / hashing.median:.2f}x iperf3 on "
        f"medians; xfer import reaches {hashing.median / xfer.median:.2f}x sha256 alone"
    )


def measure_import_curl(s: Setup, tls: XferServer, tls_vdi: str) -> None:
    """Figure 3: ``curl -T`` into xfer against ``curl -T`` into a sink that discards; its floor
    is the same bytes written straight to the SR's disk and synced, as a durable import must
    before it answers. Beside them, the same upload over TLS into the TLS server's VDI."""
    size, d = s.args.size, s.deadline
    url, what, sink = start_sink(s.procs, s.workdir, s.args.sink)
    try:
        xfer_argv = curl_put(s.source, s.plain.import_url(s.import_vdi))
        sink_argv = curl_put(s.source, url, auth=False)
        tls_argv = curl_put(s.source, tls.import_url(tls_vdi), insecure=True)

        def tls_once() -> float:
            cache(s.source)
            done = run(tls_argv, d.left())
            body = check_curl(done.stdout, shlex.join(tls_argv), up=size)
            if tls_vdi not in body:
                raise BenchError(f"{shlex.join(tls_argv)}: answered {body.strip()[:200]!r}")
            return done.seconds

        def xfer_once() -> float:
            seconds, stdout = import_timing(s, xfer_argv, "curl -T import")
            body = check_curl(stdout, shlex.join(xfer_argv), up=size)
            if s.import_vdi not in body:
                raise BenchError(f"{shlex.join(xfer_argv)}: answered {body.strip()[:200]!r}")
            return seconds

        def sink_once() -> float:
            cache(s.source)
            done = run(sink_argv, d.left())
            if s.args.sink == "http":
                check_curl(done.stdout, shlex.join(sink_argv), up=size)
            return done.seconds

        floor_file = s.plain.vdi_file(s.import_vdi).parent / "bench-floor.bin"
        floor_argv = ["dd", f"if={s.source}", f"of={floor_file}", "bs=4M", "oflag=direct"]
        floor_argv.append("conv=fsync")

        def floor_once() -> float:
            cache(s.source)
            try:
                return run(floor_argv, d.left()).seconds
            finally:
                floor_file.unlink(missing_ok=True)

        xfer = Figure(name="curl -T -> xfer", command=shlex.join(xfer_argv), size=size)
        peer = Figure(name="curl -T -> sink", command=shlex.join(sink_argv), size=size)
        floor = Figure(name="dd direct+fsync to SR", command=shlex.join(floor_argv), size=size)
        https = Figure(name="curl -k -T -> xfer https", command=shlex.join(tls_argv), size=size)
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


def prefix_copy(src: Path, dst: Path, size: int) -> None:
    """``dst``: the first ``size`` bytes of ``src``, copied inside the kernel."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left = size
        while left:
            left -= os.copy_file_range(fi.fileno(), fo.fileno(), left)


def measure_sparse(s: Setup) -> None:
    """Figure 4: a 100 GiB VDI holding ``sparse_data`` exported as VHD, against a dense VDI of
    that data exported as VHD, both fetched with curl: the cost follows the data, not the
    virtual size."""
    d, srv, data = s.deadline, s.plain, s.sparse_data
    sparse_raw, sparse_vhd = s.workdir / "sparse.raw", s.workdir / "sparse.vhd"
    dense_raw = s.workdir / "dense.raw"
    progress(f"figure 4: sparse raw file, {SPARSE_VIRTUAL // GIB} GiB holding {data // MIB} MiB")
    make_sparse(sparse_raw, SPARSE_VIRTUAL, data // BLOCK)
    run([*s.xfer, "vhd", "convert", str(sparse_raw), str(sparse_vhd)], d.left())
    sparse_raw.unlink()
    sparse_vdi = srv.vdi_create(SPARSE_VIRTUAL, "bench-sparse", d.left())
    done = run(srv.import_argv(sparse_vdi, sparse_vhd, "vhd"), d.left(), xfer_env())
    s.report.notes.append(
        f"figure 4 setup: xfer import --format vhd of a {sparse_vhd.stat().st_size // MIB} MiB "
        f"VHD into the {SPARSE_VIRTUAL // GIB} GiB VDI took {done.seconds:.2f} s"
    )
    sparse_vhd.unlink()
    prefix_copy(s.source, dense_raw, data)
    dense_vdi = srv.vdi_create(data, "bench-dense", d.left())
    run(srv.import_argv(dense_vdi, dense_raw), d.left(), xfer_env())
    dense_raw.unlink()
    files = {sparse_vdi: srv.vdi_file(sparse_vdi), dense_vdi: srv.vdi_file(dense_vdi)}
    sizes: dict[str, int] = {}

    def fetch(uuid: str, argv: list[str]) -> Callable[[], float]:
        def once() -> float:
            cache(files[uuid])
            done = run(argv, d.left())
            check_curl(done.stdout, shlex.join(argv))
            sizes[uuid] = int(done.stdout.split()[-2])
            return done.seconds

        return once

    sparse_argv = curl_get(srv.export_url(sparse_vdi, "vhd"))
    dense_argv = curl_get(srv.export_url(dense_vdi, "vhd"))
    sparse = Figure(
        name=f"{SPARSE_VIRTUAL // GIB} GiB VDI as vhd", command=shlex.join(sparse_argv), size=data
    )
    dense = Figure(name=f"{data // MIB} MiB VDI as vhd", command=shlex.join(dense_argv), size=data)
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
            srv.vdi_destroy(uuid, d.left())
    s.report.notes.append(
        f"figure 4: VHD bytes sent: sparse {sizes.get(sparse_vdi, 0)}, "
        f"dense {sizes.get(dense_vdi, 0)} (MiB/s in the table are on the {data // MIB} MiB data)"
    )
    s.report.figures += [("4 sparse vhd", sparse), ("4 sparse vhd", dense)]
    ratio_target(s.report, "4 sparse VHD export", sparse, dense, SPARSE_TARGET, by_time=True)


def concurrently(argvs: list[list[str]], timeout: float) -> list[str]:
    """Run the commands at once, each to its end; their stdouts. BenchError if one fails or
    they outlive ``timeout`` (then each still running is killed)."""
    clients = []
    try:
        for a in argvs:
            clients.append(
                subprocess.Popen(
                    a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=ROOT
                )
            )
        outs = [c.communicate(timeout=timeout)[0] for c in clients]
    except subprocess.TimeoutExpired:
        raise BenchError("the concurrent transfers did not finish in time") from None
    except OSError as e:
        raise BenchError(f"{shlex.join(argvs[len(clients)])}: {e.strerror}") from None
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
    for a, c in zip(argvs, clients, strict=True):
        if c.returncode != 0:
            raise BenchError(f"{shlex.join(a)} exited with {c.returncode}")
    return outs


def measure_rss(s: Setup) -> None:
    """Figure 5: the server's RSS, sampled, while two exports and two imports of ``--size``
    run at once; its peak RSS (VmHWM, reset before each run) beside it, to show what the
    samples might miss, and its children's apart."""
    size, d, srv = s.args.size, s.deadline, s.plain
    server = psutil.Process(srv.proc.pid)
    targets = [srv.vdi_create(size, f"bench-rss-{i}", d.left()) for i in range(2)]
    peaks: list[float] = []
    hwms: list[float] = []
    children: list[float] = []
    try:
        for i in range(s.args.runs):
            os.sync()
            cache(s.source, srv.vdi_file(s.export_vdi))
            base = rss(server) / MIB
            reset = reset_peak_rss(server.pid)
            argvs = [curl_get(srv.export_url(s.export_vdi)) for _ in range(2)]
            argvs += [curl_put(s.source, srv.import_url(u)) for u in targets]
            start = time.perf_counter()
            with RssSampler(server.pid) as sampler:
                outs = concurrently(argvs, d.left())
            seconds = time.perf_counter() - start
            for a, out in zip(argvs, outs, strict=True):
                check_curl(out, shlex.join(a), down=None if "-T" in a else size)
            peak = sampler.peak / MIB
            hwm = peak_rss(server.pid) / MIB if reset else float("nan")
            peaks.append(peak)
            hwms.append(hwm)
            children.append(sampler.children_peak / MIB)
            progress(
                f"  rss: run {i + 1}/{s.args.runs}: 4 x {size // MIB} MiB in {seconds:.2f} s "
                f"({4 * size / MIB / seconds:.0f} MiB/s together), RSS before {base:.1f} MiB, "
                f"peak {peak:.1f} MiB ({sampler.samples} samples), VmHWM {hwm:.1f} MiB, "
                f"children's peak {sampler.children_peak / MIB:.1f} MiB"
            )
    finally:
        for u in targets:
            srv.vdi_destroy(u, d.left())
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
    """The check that ends the run: a raw export of the import target hashes like the source
    (the imports wrote it)."""
    argv = ["curl", "-gsSf", "-u", f"root:{PASSWORD}", s.plain.export_url(s.import_vdi)]
    digest = hashlib.sha256()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        while data := proc.stdout.read(CHUNK):
            digest.update(data)
        proc.wait(s.deadline.left())
    except subprocess.TimeoutExpired:
        raise BenchError(f"check: {shlex.join(argv)} did not finish in time") from None
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
