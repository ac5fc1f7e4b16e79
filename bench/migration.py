"""Live migration between two ``xfer serve`` daemons on ::1, against one iperf3 TCP stream.

Figures (issue 10's speed targets):

- the memory stream of an idle 1 GiB guest with random contents (round 0's rate) against one
  iperf3 stream, and the whole migration's time against 1.2 x memory / iperf3 rate;
- the pause of a 1 GiB guest writing a 64 MiB hot set at 20 MiB/s: the largest gap between
  its ledger's timestamps (as the guest saw it), median of the runs, beside the source's
  pause-to-resumed measure;
- a guest writing about twice as fast as the link: rounds, throttle and time against the idle
  migration's;
- the source daemon's own memory (USS: guest RAM, shared with the guest, is not in it) during
  the 1 GiB migration.

The random guest is made by ``PUT /vm_restore`` of an image built here (random pages, a fresh
CPU state), so that its memory is random from the start and it writes nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    GIB,
    MIB,
    Outcome,
    print_header,
    print_table,
    print_targets,
    progress,
    psutil,
    xfer_command,
)
from migrate.formats import libxc, suspend  # noqa: E402
from migrate.formats.xenops import VmMetadata  # noqa: E402
from migrate.guest.workloads import REGS_SIZE, check_ledger, read_ledger  # noqa: E402

PASSWORD = "bench"


class Daemon:
    """A running ``xfer serve`` on [::1] and a root session."""

    def __init__(self, state: Path) -> None:
        self.proc = subprocess.Popen(
            [*xfer_command(), "serve", "--state-dir", str(state), "--listen", "[::1]:0",
             "--password", PASSWORD],
            stdout=subprocess.PIPE,
            stderr=open(state.parent / f"{state.name}.log", "wb"),  # noqa: SIM115
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r":(\d+)/", line)
        if not match:
            raise RuntimeError(f"xfer serve did not start: {line!r}")
        self.port = int(match.group(1))
        self.proxy = xmlrpc.client.ServerProxy(f"http://[::1]:{self.port}/")
        self.session = self.call("session.login_with_password", "root", PASSWORD, "1.0", "bench")

    def call(self, method: str, *params: Any) -> Any:
        answer = getattr(self.proxy, method)(*params)
        if answer["Status"] != "Success":
            raise RuntimeError(f"{method}: {answer['ErrorDescription']}")
        return answer["Value"]

    def rpc(self, method: str, *params: Any) -> Any:
        return self.call(method, self.session, *params)

    def http(self, method: str, path: str, body: Any = None, length: int | None = None) -> bytes:
        conn = http.client.HTTPConnection("::1", self.port, timeout=600)
        headers = {} if length is None else {"content-length": str(length)}
        sep = "&" if "?" in path else "?"
        conn.request(method, f"{path}{sep}session_id={self.session}", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data

    def dest_map(self) -> dict[str, str]:
        host = self.rpc("host.get_all")[0]
        for pif in self.rpc("PIF.get_all"):
            if self.rpc("PIF.get_device", pif) == "lo":
                dest: dict[str, str] = self.rpc(
                    "host.migrate_receive", host, self.rpc("PIF.get_network", pif), {}
                )
                return dest
        raise RuntimeError("no loopback PIF")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@contextmanager
def daemons(workdir: Path) -> Iterator[tuple[Daemon, Daemon]]:
    started: list[Daemon] = []
    try:
        for name in ("a", "b"):
            started.append(Daemon(workdir / name))
        yield started[0], started[1]
    finally:
        for daemon in started:
            daemon.stop()


def iperf3(seconds: int) -> float:
    """Bytes/s of one iperf3 TCP stream on ::1."""
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "::1", "-p", "5299"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        out = subprocess.run(
            ["iperf3", "-c", "::1", "-p", "5299", "-t", str(seconds), "-J"],
            capture_output=True, check=True, timeout=seconds + 30,
        ).stdout
    finally:
        server.wait(30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 8


def random_image(path: Path, memory: int) -> str:
    """A suspend image of a new idle VM whose memory is random; its uuid."""
    vm = str(uuidlib.uuid4())
    rng = np.random.default_rng(10)
    with path.open("wb") as f:
        meta = VmMetadata(vm, "random", memory, 1, "idle")
        f.write(suspend.SIGNATURE + suspend.xenops_record(meta) + suspend.libxc_header())
        f.write(libxc.image_header() + libxc.domain_header() + libxc.static_data_end())
        pages = memory // 4096
        for first in range(0, pages, 1024):
            pfns = np.arange(first, min(first + 1024, pages), dtype=np.uint64)
            f.write(libxc.page_data_header(pfns))
            f.write(rng.bytes(len(pfns) * 4096))
        f.write(libxc.tsc_info() + libxc.hvm_params(()) + libxc.hvm_context(bytes(REGS_SIZE)))
        f.write(libxc.end() + suspend.end_of_image())
    return vm


def migrate(source: Daemon, vm: str, dest: dict[str, str], **options: str) -> dict[str, Any]:
    """Async.VM.migrate_send; the report, once the task ended (RuntimeError on failure)."""
    task = source.rpc("Async.VM.migrate_send", f"OpaqueRef:{vm}", dest, True, {}, {}, options)
    while source.rpc("task.get_status", task) in ("pending", "cancelling"):
        time.sleep(0.05)
    record = source.rpc("task.get_record", task)
    if record["status"] != "success":
        raise RuntimeError(f"migration failed: {record['error_info']}")
    report: dict[str, Any] = json.loads(record["other_config"]["xfer_migration"])
    return report


def ledger_of(image: bytes) -> Any:
    """The ledger verdict of a saved image's memory."""
    reader = suspend.ImageReader()
    memory = bytearray()
    at = 0
    while (n := reader.need()) > 0:
        event = reader.feed(image[at : at + n])
        at += n
        if isinstance(event, suspend.Xenops):
            memory = bytearray(event.metadata.memory)
        elif isinstance(event, libxc.Pages):
            for start, end in event.runs.tolist():
                size = (end - start) * 4096
                memory[start * 4096 : end * 4096] = image[at : at + size]
                at += size
            reader.payload_done()
    return check_ledger(read_ledger(memory))


class UssWatch:
    """The largest USS of a process, sampled every 20 ms while in the block."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> UssWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_full_info().uss)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def fmt_rate(rate: float) -> str:
    return f"{rate / MIB:.0f} MiB/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", default=1, type=int, help="GiB of each guest (1)")
    parser.add_argument("--repeat", default=5, type=int, help="runs of each figure (5)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), type=Path)
    args = parser.parse_args()
    memory = args.memory * GIB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="xfer-bench-migration-") as tmp:
        workdir = Path(tmp)
        print_header("xfer live migration on ::1 vs one iperf3 stream", xfer_command(),
                     ["iperf3"], workdir)
        progress("iperf3 ...")
        link = statistics.median(iperf3(3) for _ in range(3))
        progress(f"iperf3: {fmt_rate(link)}")
        image = workdir / "random.img"
        vm = random_image(image, memory)
        rows: list[list[str]] = []
        targets: list[Outcome] = []
        with daemons(workdir) as (a, b):
            size = image.stat().st_size
            with image.open("rb") as f:
                a.http("PUT", "/vm_restore", f, size)
            image.unlink()
            streams, totals, peaks = [], [], []
            here, there = a, b
            for run in range(args.repeat):
                progress(f"idle random {args.memory} GiB, run {run + 1}")
                with UssWatch(here.proc.pid) as watch:
                    report = migrate(here, vm, there.dest_map())
                first = report["rounds"][0]
                streams.append(first["bytes"] / first["seconds"])
                totals.append(report["total"])
                peaks.append(watch.peak)
                here, there = there, here
            stream, total = statistics.median(streams), statistics.median(totals)
            rows.append(["idle random: round 0 stream", fmt_rate(stream),
                         f"{stream / link:.2f}x iperf3"])
            rows.append(["idle random: whole migration", f"{total:.3f} s",
                         f"{total / (memory / link):.2f}x memory/iperf3"])
            rows.append(["daemon USS, peak", f"{max(peaks) / MIB:.0f} MiB", ""])
            targets.append(Outcome("stream >= 0.9x iperf3", stream >= 0.9 * link,
                                   f"{stream / link:.2f}x"))
            targets.append(Outcome("idle migration <= 1.2x memory/iperf3",
                                   total <= 1.2 * memory / link, f"{total / (memory / link):.2f}x"))
            targets.append(Outcome("daemon USS < 100 MiB", max(peaks) < 100 * MIB,
                                   f"{max(peaks) / MIB:.0f} MiB"))
            here.rpc("VM.hard_shutdown", f"OpaqueRef:{vm}")
            gaps, downtimes = [], []
            for run in range(args.repeat):
                progress(f"hot set 64 MiB at 20 MiB/s, run {run + 1}")
                ref = a.rpc("VM.create", {"name_label": "hot", "memory_static_max": str(memory),
                                          "other_config": {"xfer_workload": "hotset:20M:64M+ledger"}})
                a.rpc("VM.start", ref, False, False)
                time.sleep(2)
                report = migrate(a, ref.removeprefix("OpaqueRef:"), b.dest_map())
                downtimes.append(report["downtime"])
                verdict = ledger_of(b.http("GET", f"/vm_save?vm={ref}"))
                if not verdict.intact:
                    raise RuntimeError(f"ledger broken: {verdict}")
                gaps.append(verdict.max_gap)
                b.rpc("VM.destroy", ref)
            gap = statistics.median(gaps)
            rows.append(["hot set: guest-observed pause (median)", f"{gap * 1000:.1f} ms",
                         "runs: " + ", ".join(f"{g * 1000:.1f}" for g in gaps)])
            rows.append(["hot set: source pause -> resumed (median)",
                         f"{statistics.median(downtimes) * 1000:.1f} ms", ""])
            targets.append(Outcome("hot-set pause <= 20 ms", gap <= 0.020, f"{gap * 1000:.1f} ms"))
            progress("a guest writing twice as fast as the link")
            rate = int(2 * link) >> 20
            ref = a.rpc("VM.create", {"name_label": "fast", "memory_static_max": str(memory),
                                      "other_config": {"xfer_workload": f"uniform:{rate}M"}})
            a.rpc("VM.start", ref, False, False)
            time.sleep(1)
            report = migrate(a, ref.removeprefix("OpaqueRef:"), b.dest_map())
            written = max(r["dirty_rate"] for r in report["rounds"])
            rows.append(["fast writer: whole migration", f"{report['total']:.3f} s",
                         f"{len(report['rounds'])} rounds, throttle up to "
                         f"{max(r['throttle'] for r in report['rounds']):.2f}, dirtied at "
                         f"{fmt_rate(written)} at most"])
            targets.append(Outcome("fast writer converges in <= 3x the idle time",
                                   report["total"] <= 3 * total,
                                   f"{report['total'] / total:.2f}x"))
            b.rpc("VM.hard_shutdown", ref)
        print(f"iperf3, one stream on ::1: {fmt_rate(link)}\n")
        print_table(["figure", "value", "against"], rows, {0, 2})
        print_targets(targets, None)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "")
    sys.exit(main())
