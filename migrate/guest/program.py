"""The guest program: ``python -m migrate.guest.program``, one process per domain.

Started by :mod:`migrate.guest.processes` with its RAM memfd, its register-area memfd, a
control socket and a socket per disk passed as descriptors. It maps its memory, registers
the RAM for the kernel's dirty log, reports ready on the control socket (a JSON line), stops
itself if created paused, then runs its workload.

It dies with the daemon. Not by PR_SET_PDEATHSIG: that signal follows the *thread* that
forked, and trio forks in a worker thread that exits when idle, which would kill the guest
seconds later. Instead a running guest exits when the control socket shows the daemon's end
closed (checked every tick), and a stopped one is in a process group of its own that the
daemon's death orphans, so the kernel sends it SIGHUP (fatal) and SIGCONT.

It keeps nothing of its own that matters: every counter is in the register area and the
ledger in RAM, so the same program over the same memory on another host continues.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import signal
import socket
import sys
import time

import numpy as np

from migrate.guest import dirtylog, workloads
from migrate.guest.blockwire import BlockClient, BlockIOError

EXIT_FAILED = 2
"""Exit status of a guest that could not start (the reason went to the control socket)."""
EXIT_DISK = 3
"""Exit status of a guest whose disk failed (the reason went to stderr)."""
MAX_CATCH_UP = 0.05
"""Seconds of lateness a step makes up for at most."""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m migrate.guest.program")
    parser.add_argument("--parent", type=int, required=True, help="the daemon's pid")
    parser.add_argument("--control", type=int, required=True, help="control socket fd")
    parser.add_argument("--ram", type=int, required=True, help="RAM memfd")
    parser.add_argument("--regs", type=int, required=True, help="register area memfd")
    parser.add_argument("--memory", type=int, required=True, help="RAM bytes")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--disk", action="append", default=[], help="FD:SIZE of a disk socket")
    parser.add_argument("--paused", action="store_true", help="stop before running")
    return parser.parse_args(argv)


def _daemon_gone(control: socket.socket) -> bool:
    """Whether the daemon's end of the control socket is closed (the daemon died)."""
    try:
        return control.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Run the guest until killed."""
    args = _arguments(argv)
    if os.getppid() != args.parent:  # the daemon died already
        os._exit(EXIT_FAILED)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    control = socket.socket(fileno=args.control)
    try:
        workload = workloads.parse(args.workload, args.memory)
        ram = mmap.mmap(args.ram, args.memory)
        regs = mmap.mmap(args.regs, workloads.REGS_SIZE)
        start = dirtylog.mapping_address(ram)
        report: dict[str, object] = {"pid": os.getpid(), "start": start, "wp": True}
        try:
            # The fd stays open for the life of the process: closing it ends the log.
            dirtylog.register_wp_async(start, args.memory)
        except OSError as e:
            report.update(wp=False, wp_error=f"{dirtylog.UNAVAILABLE} ({e.strerror or e})")
        disks = []
        for text in args.disk:
            fd, size = (int(part) for part in text.split(":"))
            disks.append(BlockClient(socket.socket(fileno=fd), size))
    except Exception as e:
        control.sendall(json.dumps({"error": str(e)}).encode() + b"\n")
        os._exit(EXIT_FAILED)
    control.sendall(json.dumps(report).encode() + b"\n")
    if args.paused:
        os.kill(os.getpid(), signal.SIGSTOP)
    disk = disks[0] if disks else None
    machine = workloads.Machine(
        workload,
        np.frombuffer(ram, dtype=np.uint64),
        np.frombuffer(regs, dtype=np.uint64),
        disk.write if disk else None,
        disk.size if disk else 0,
    )
    try:
        machine.boot()
        _run(machine, control)
    except (BlockIOError, workloads.WorkloadError) as e:
        print(f"guest {os.getpid()}: {e}", file=sys.stderr)
        os._exit(EXIT_DISK)


def _run(machine: workloads.Machine, control: socket.socket) -> None:
    """Step the workload every tick. Lateness (the host scheduling the guest late) is caught
    up, up to :data:`MAX_CATCH_UP`; time spent stopped (paused, throttled) is not: a vCPU
    that was not running did no work, which is what makes the throttle slow the guest."""
    tick = machine.workload.tick
    continued = False

    def on_continue(signum: int, frame: object) -> None:
        nonlocal continued
        continued = True

    signal.signal(signal.SIGCONT, on_continue)
    last = deadline = time.monotonic()
    while not _daemon_gone(control):
        now = time.monotonic()
        seconds = min(now - last, MAX_CATCH_UP)
        if continued:
            continued = False
            seconds = min(seconds, tick)
        machine.step(seconds, time.time_ns())
        last = now
        deadline += tick
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -MAX_CATCH_UP:
            deadline = time.monotonic()


if __name__ == "__main__":
    main()
