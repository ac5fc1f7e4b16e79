"""``make demo``: the disk tools and a live migration at work, with a short report.

Creates a dynamic VHD, fills it, converts it to raw and back, takes a differencing snapshot,
writes into it, exports the delta against the base, checks every image, and cross-checks the
results with qemu-img where it is installed. Then it starts a real host (``xfer serve`` on
``[::1]``), imports the raw disk into a new VDI over HTTP and exports it back as raw and as a
VHD. Then two hosts, each its own ``xfer serve`` on ``[::1]``: a VM (256 MiB, the ledger
workload) starts on the first, is live-migrated to the second with the memory digests
compared at the pause, and back without; the reports of their pre-copy rounds are shown, the
VM is saved and its ledger read from the image (every record there, in order, going on after
the migrations, and the pause as the guest saw it), the image restored on the second host,
and everything is cleaned up. Every step runs
the real ``xfer`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import secrets
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import numpy as np
import trio

from migrate.addresses import parse_host
from migrate.cli.commands import TIMEOUT
from migrate.cli.http_client import Target, open_client, ssl_context
from migrate.cli.migration_report import (
    Report,
    format_seconds,
    memory_verdict,
    parse_report,
    render,
)
from migrate.cli.rpc_client import open_session
from migrate.cli.saved_image import read_saved_vm
from migrate.cli.units import format_size, parse_size
from migrate.formats.xapi import DEFAULT_USER
from migrate.guest.workloads import check_ledger, read_ledger
from vhd import Image

BLOCK = 2 << 20
SERVE_TIMEOUT = 15.0
"""Longest wait for ``xfer serve`` to announce its listener."""
NETWORK = "lo"
"""The network the migration goes over (its bridge): the hosts' address on it is ``::1``."""
RUNNING = 1.0
"""Seconds the guest runs before the migration, and again after it, before it is saved."""


def sha256_of(data_source: Image | str) -> str:
    """sha256 of a raw file's bytes, or of an image's virtual disk read through its chain."""
    h = hashlib.sha256()
    if isinstance(data_source, str):
        with open(data_source, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        return h.hexdigest()
    for offset in range(0, data_source.size, 8 << 20):
        h.update(data_source.read(offset, min(8 << 20, data_source.size - offset)))
    return h.hexdigest()


class Demo:
    """Runs the steps in ``workdir`` and collects report rows."""

    def __init__(self, workdir: str, size: int, memory: int) -> None:
        self.dir = workdir
        self.size = size
        self.memory = memory
        self.rows: list[tuple[str, str, str, str]] = []
        self.migration_reports: list[str] = []
        self.failed = False

    def path(self, name: str) -> str:
        """A file of the demo's directory."""
        return os.path.join(self.dir, name)

    def xfer(self, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
        """Run ``xfer ARGS`` (``env`` added to the environment), echoing the command; returns
        (seconds, stdout)."""
        print(f"$ xfer {shlex.join(args)}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "migrate.cli.main", *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, **env} if env else None,
        )
        elapsed = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"demo: xfer {args[0]} {args[1]} failed: {done.stderr.strip()}")
        return elapsed, done.stdout

    def record(self, step: str, ok: bool, detail: str, seconds: float | None = None) -> None:
        """Add a report row; a failed check makes the demo exit non-zero."""
        self.failed |= not ok
        timing = f"{seconds:.2f} s" if seconds is not None else ""
        self.rows.append((step, "ok" if ok else "FAILED", detail, timing))

    def fill(self, name: str, blocks: list[int], seed: int) -> int:
        """Write random data into ``blocks`` of the image (and one unaligned write)."""
        rng = random.Random(seed)
        written = 0
        with Image.open(self.path(name), writable=True) as image:
            for b in blocks:
                length = rng.choice([BLOCK, BLOCK // 2, 4096 * rng.randint(1, 64)])
                image.write(b * BLOCK, rng.randbytes(length))
                written += length
            image.write(self.size // 3 + 123, b"xfer demo: unaligned write")
            image.flush()
        return written

    def run(self) -> None:
        """All steps, in order."""
        nblocks = self.size // BLOCK
        base_blocks = sorted(random.Random(1).sample(range(nblocks), max(1, nblocks // 16)))

        t, _ = self.xfer("vhd", "create", self.path("base.vhd"), "--size", str(self.size))
        self.record("create", True, f"dynamic VHD, {format_size(self.size)} virtual", t)

        written = self.fill("base.vhd", base_blocks, seed=2)
        _, out = self.xfer("vhd", "info", "--json", self.path("base.vhd"))
        info = json.loads(out)
        self.record(
            "fill",
            info["allocated_blocks"] == len(base_blocks) + 1,
            f"{format_size(written)} written, {info['allocated_blocks']} blocks allocated",
        )

        t, _ = self.xfer("vhd", "convert", self.path("base.vhd"), self.path("base.raw"))
        with Image.open(self.path("base.vhd")) as image:
            expected = sha256_of(image)
        got = sha256_of(self.path("base.raw"))
        allocated = os.stat(self.path("base.raw")).st_blocks * 512
        self.record(
            "vhd -> raw",
            got == expected,
            f"sha256 {got[:16]}, {format_size(allocated)} allocated (sparse)",
            t,
        )

        t, _ = self.xfer("vhd", "convert", self.path("base.raw"), self.path("copy.vhd"))
        with Image.open(self.path("copy.vhd")) as image:
            same = sha256_of(image) == expected
        file_size = os.path.getsize(self.path("copy.vhd"))
        self.record("raw -> vhd", same, f"same content, file {format_size(file_size)}", t)

        self.xfer("vhd", "create", self.path("snap.vhd"), "--parent", self.path("base.vhd"))
        new_blocks = sorted(random.Random(3).sample(range(nblocks), max(1, nblocks // 64)))
        written = self.fill("snap.vhd", new_blocks, seed=4)
        self.record("snapshot", True, f"differencing child, {format_size(written)} new writes")

        t, _ = self.xfer(
            "vhd",
            "convert",
            self.path("snap.vhd"),
            self.path("delta.vhd"),
            "--base",
            self.path("base.vhd"),
        )
        with Image.open(self.path("snap.vhd")) as snap, Image.open(self.path("delta.vhd")) as d:
            same = sha256_of(snap) == sha256_of(d)
        delta_size = os.path.getsize(self.path("delta.vhd"))
        self.record(
            "delta export",
            same,
            f"{format_size(delta_size)} against a {format_size(file_size)} full image; "
            "base + delta = snapshot",
            t,
        )

        clean = []
        for name in ("base.vhd", "copy.vhd", "snap.vhd", "delta.vhd"):
            _, out = self.xfer("vhd", "check", self.path(name))
            clean.append("no problems found" in out)
        self.record("check", all(clean), f"{sum(clean)} of {len(clean)} images clean")

        self.cross_check(expected)
        self.transfer(expected)
        self.migration()

    def cross_check(self, expected: str) -> None:
        """qemu-img reads xfer's images the same way (when qemu-img is installed)."""
        qemu = shutil.which("qemu-img")
        if qemu is None:
            self.record("qemu-img", True, "not installed: cross-check skipped")
            return
        out = self.path("qemu.raw")
        cmd = [qemu, "convert", "-f", "vpc", "-O", "raw", self.path("copy.vhd"), out]
        print(f"$ {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        info = subprocess.run(
            [qemu, "info", "-f", "vpc", "--output=json", self.path("copy.vhd")],
            capture_output=True,
            text=True,
            check=True,
        )
        size = json.loads(info.stdout)["virtual-size"]
        ok = sha256_of(out) == expected and size == self.size
        self.record("qemu-img", ok, f"reads copy.vhd as {size} bytes, identical content")

    def transfer(self, expected: str) -> None:
        """The raw disk through a real host: imported into a new VDI, exported back as raw
        and as a VHD, each compared with the source by sha256."""
        password = secrets.token_hex(12)
        start = time.perf_counter()
        with self.serve("host", password) as url:
            self.record("serve", True, f"host listening on {url}", time.perf_counter() - start)
            self.transfer_steps(url, password, expected)

    @contextlib.contextmanager
    def serve(self, name: str, password: str) -> Iterator[str]:
        """A real host: ``xfer serve`` on ``[::1]`` with its state in the directory ``name``
        (its log in ``name.log``); its URL. Stopped afterwards."""
        args = ["serve", "--state-dir", self.path(name), "--listen", "[::1]:0"]
        print(f"$ xfer {shlex.join([*args, '--password', '...'])}", flush=True)
        log_path = self.path(f"{name}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "migrate.cli.main", *args, "--password", password],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            yield self.listening(proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def listening(self, proc: subprocess.Popen[bytes], log_path: str) -> str:
        """The URL of the ``listening on URL`` line ``xfer serve`` prints once it is bound."""
        assert proc.stdout is not None
        deadline = time.monotonic() + SERVE_TIMEOUT
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in data:
                left = deadline - time.monotonic()
                chunk = b""
                if left > 0 and selector.select(left):
                    chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    with open(log_path, encoding="utf-8", errors="replace") as f:
                        lines = f.read().strip().splitlines() or ["no output"]
                    raise SystemExit(f"demo: xfer serve did not start: {lines[-1]}")
                data += chunk
        line = data.decode().splitlines()[0]
        if not line.startswith("listening on "):
            raise SystemExit(f"demo: xfer serve printed {line!r}")
        return line.removeprefix("listening on ")

    def transfer_steps(self, url: str, password: str, expected: str) -> None:
        """Import base.raw with ``xfer import --sr`` and export it back with ``xfer export``."""
        sr = trio.run(
            first_sr, Target(parse_host(url), DEFAULT_USER, password, ssl_context(), TIMEOUT)
        )
        auth = ["--host", url]
        env = {"XFER_PASSWORD": password}

        t, out = self.xfer(
            "import", *auth, "--sr", sr, "--name", "demo", self.path("base.raw"), env=env
        )
        fields = dict(line.split(" ", 1) for line in out.splitlines())
        vdi = fields["vdi"]
        sent = fields["sha256"].split()[0]
        _, out = self.xfer("vdi", "list", *auth, "--json", env=env)
        row = next(r for r in json.loads(out) if r["uuid"] == vdi)
        self.record(
            "import",
            sent == expected and int(row["virtual_size"]) == self.size,
            f"base.raw into a new VDI {vdi[:8]}, {format_size(int(row['virtual_size']))}",
            t,
        )

        t, out = self.xfer("export", *auth, "--vdi", vdi, "-o", self.path("back.raw"), env=env)
        got = sha256_of(self.path("back.raw"))
        ok = got == expected and out.split()[1] == expected
        self.record("export raw", ok, f"sha256 {got[:16]}, same as base.raw", t)

        t, out = self.xfer(
            "export", *auth, "--vdi", vdi, "--format", "vhd", "-o", self.path("back.vhd"), env=env
        )
        with Image.open(self.path("back.vhd")) as image:
            same = sha256_of(image) == expected and image.size == self.size
        file_size = os.path.getsize(self.path("back.vhd"))
        self.record("export vhd", same, f"dynamic VHD of {format_size(file_size)}, same disk", t)

    def migration(self) -> None:
        """Two hosts, a VM live-migrated from the first to the second, checked."""
        password = secrets.token_hex(12)
        env = {"XFER_PASSWORD": password}
        start = time.perf_counter()
        with self.serve("host-a", password) as a, self.serve("host-b", password) as b:
            self.record("two hosts", True, f"A on {a}, B on {b}", time.perf_counter() - start)
            try:
                self.migration_steps(a, b, env)
            finally:
                self.clean_up((a, b), env)

    def migration_steps(self, a: str, b: str, env: dict[str, str]) -> None:
        """Create and start the VM on ``a``; migrate it to ``b`` comparing the memory at the
        pause, and back to ``a`` without (the downtime as it is); save it on ``a`` and read
        its ledger from the image; restore the image on ``b``."""
        args = ("--memory", str(self.memory), "--workload", "ledger", "--name", "demo")
        _, out = self.xfer("vm", "create", "--host", a, *args, env=env)
        vm = out.strip()
        t, _ = self.xfer("vm", "start", "--host", a, "--vm", vm, env=env)
        detail = f"VM {vm[:8]} on A: {format_size(self.memory)}, ledger workload"
        self.record("vm start", True, detail, t)
        time.sleep(RUNNING)

        report, _ = self.migrate(vm, a, b, "A -> B", env, "--verify")
        digest = (report.source_digest or "")[:16]
        verdict = {
            True: f"identical at the pause (sha256 {digest}... on both hosts)",
            False: f"DIFFERENT at the pause: {memory_verdict(report)}",
            None: "not compared: the report has no digests",
        }[report.memory_identical]
        self.record("memory", report.memory_identical is True, verdict)
        time.sleep(RUNNING)
        report, window = self.migrate(vm, b, a, "B -> A", env)
        time.sleep(RUNNING)

        image = self.path("demo-vm.img")
        t, _ = self.xfer("vm", "save", "--host", a, "--vm", vm, "-o", image, env=env)
        size = format_size(os.path.getsize(image))
        self.record("vm save", True, f"A saved the VM to an image of {size}", t)
        self.check_ledger(image, window, report.downtime)

        t, out = self.xfer("vm", "restore", "--host", b, image, env=env)
        restored = out.strip()
        row = self.vms(b, env).get(restored)
        ok = row is not None and row["power_state"] == "Running"
        self.record("vm restore", ok, f"the image running again on B as {restored[:8]}", t)

    def migrate(
        self, vm: str, source: str, destination: str, name: str, env: dict[str, str], *args: str
    ) -> tuple[Report, tuple[int, int]]:
        """``xfer migrate`` of ``vm`` from ``source`` to ``destination`` (``args`` added),
        checked to have moved it; its report, and when it began and ended (ns, wall clock)."""
        began = time.time_ns()
        t, out = self.xfer(
            "migrate",
            "--host",
            source,
            "--vm",
            vm,
            "--to",
            destination,
            "--network",
            NETWORK,
            "--json",
            *args,
            env=env,
        )
        ended = time.time_ns()
        report = parse_report(out)
        note = " (--verify: the downtime includes the destination hashing the memory)"
        self.migration_reports.append(
            f"{name}{note if '--verify' in args else ''}\n\n{render(report)}"
        )
        count = len(report.rounds)
        detail = f"{name}: {count} round{'' if count == 1 else 's'}"
        if report.downtime is not None:
            detail += f", downtime {format_seconds(report.downtime)}"
        there = self.vms(destination, env).get(vm)
        running = there is not None and there["power_state"] == "Running"
        moved = running and vm not in self.vms(source, env)
        detail += ", running on the destination only" if moved else f"; the VM is {there}"
        self.record("live migration", report.state == "done" and moved, detail, t)
        return report, (began, ended)

    def check_ledger(self, image: str, window: tuple[int, int], downtime: float | None) -> None:
        """The ledger in the saved image: every record there and in order, records written
        after the last migration (the guest went on there), and the longest the guest saw
        no time pass during that migration (``window``), beside the downtime reported."""
        try:
            records = read_ledger(memoryview(read_saved_vm(image).memory))
        except ValueError as e:  # LedgerError, or a bad image
            self.record("ledger", False, f"unreadable: {e}")
            return
        verdict = check_ledger(records)
        times = records[:, 1]
        after = int((times > window[1]).sum())
        across = (times[1:] >= window[0]) & (times[:-1] <= window[1])
        gap = float(np.diff(times)[across].max()) / 1e9 if across.any() else 0.0
        reported = f" (reported {format_seconds(downtime)})" if downtime is not None else ""
        self.record(
            "ledger",
            verdict.intact and after > 0,
            f"{'intact' if verdict.intact else 'BROKEN'}: {verdict.records} records, "
            f"{verdict.lost} lost, {verdict.reordered} reordered, {after} after B -> A; "
            f"its pause as the guest saw it {format_seconds(gap)}{reported}",
        )

    def vms(self, host: str, env: dict[str, str]) -> dict[str, dict[str, str]]:
        """``xfer vm list --json`` of ``host``, by uuid."""
        _, out = self.xfer("vm", "list", "--host", host, "--json", env=env)
        return {row["uuid"]: row for row in json.loads(out)}

    def clean_up(self, hosts: tuple[str, ...], env: dict[str, str]) -> None:
        """Destroy every VM of the demo's hosts (the hosts stop afterwards)."""
        destroyed = 0
        for host in hosts:
            for uuid in self.vms(host, env):
                self.xfer("vm", "destroy", "--host", host, "--vm", uuid, "--force", env=env)
                destroyed += 1
        self.record("clean-up", True, f"{destroyed} VM(s) destroyed, both hosts stopped")

    def report(self, kept: bool) -> None:
        """Print the migration's report, then the table of steps."""
        for text in self.migration_reports:
            print()
            print(text, end="")
        print()
        widths = [max(len(r[i]) for r in self.rows) for i in range(4)]
        for row in self.rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        print()
        where = f"files kept in {self.dir}" if kept else "files removed; --dir DIR keeps them"
        print(f"demo {'FAILED' if self.failed else 'passed'} ({where})")


async def first_sr(target: Target) -> str:
    """The uuid of the first SR of ``target``'s host, over XenAPI."""
    async with open_client(target) as client, open_session(client, target) as session:
        records = await session.call("SR.get_all_records")
    return str(next(iter(records.values()))["uuid"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 0 when every check held."""
    parser = argparse.ArgumentParser(prog="xfer-demo", description=__doc__)
    parser.add_argument("--size", default="1G", help="virtual disk size (default 1G)")
    parser.add_argument("--memory", default="256M", help="the VM's memory (default 256M)")
    parser.add_argument("--dir", help="keep the files in DIR (default: a temporary directory)")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    memory = parse_size(args.memory)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        demo = Demo(args.dir, size, memory)
        demo.run()
        demo.report(kept=True)
        return 1 if demo.failed else 0
    with tempfile.TemporaryDirectory(prefix="xfer-demo-") as workdir:
        demo = Demo(workdir, size, memory)
        demo.run()
        demo.report(kept=False)
    return 1 if demo.failed else 0


if __name__ == "__main__":
    sys.exit(main())
