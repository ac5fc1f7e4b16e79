"""Benchmark: xfer serve's VDI export and import over HTTP against their peers, on ``::1``.

Each figure runs xfer and its peer interleaved, timed whole, ``--runs`` times, and judges its
target on the median runs; beside the pair, the floor that bounds the figure on this machine:
1 raw export vs nginx; 2 ``xfer import`` vs iperf3 (floor: OpenSSL's sha256); 3 ``curl -T``
import vs a discarding sink (floor: a direct, synced write into the SR; also over TLS);
4 sparse VHD export vs dense; 5 the server's RSS under four transfers at once; 6 TLS export vs
plain (floor: nginx over TLS). bench/README.md gives each command and the record of runs.

Here: the command line and the order of the figures; vdi_harness runs and reports them,
vdi_servers starts what they talk to, vdi_figures measures each. From the repository root::

    .venv/bin/python bench/vdi_transfer.py            # 2 GiB transfers, 5 runs: a few minutes
    .venv/bin/python bench/vdi_transfer.py --quick    # 256 MiB: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import (
    BLOCK,
    MIB,
    BenchError,
    check_space,
    find_tool,
    print_header,
    progress,
    startup,
    terminated_as_exit,
    work_directory,
    xfer_command,
)
from vdi_figures import (
    SPARSE_DATA,
    measure_exports,
    measure_import_cli,
    measure_import_curl,
    measure_rss,
    measure_sparse,
    setup,
    start_tls,
    verify,
)
from vdi_harness import Deadline, Report, print_report
from vdi_servers import Processes, make_cert, start_nginx

from migrate.cli.units import parse_size

DEFAULT_SIZE = "2G"
QUICK_SIZE = 256 * MIB
DEFAULT_TIME_LIMIT = 1200.0


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


def sparse_data(quick: bool) -> int:
    """The data figure 4's VDIs hold: as much as a quick transfer with --quick."""
    return QUICK_SIZE if quick else SPARSE_DATA


def space_needed(size: int, quick: bool) -> int:
    """Bytes of free space the run needs at its peak: the source, the export and import VDIs,
    the TLS server's copy, the two RSS targets with their staged images, the sparse set."""
    return 9 * size + 4 * sparse_data(quick) + 512 * MIB


def bench(args: argparse.Namespace, workdir: Path, procs: Processes, report: Report) -> None:
    """All the figures, in order; servers left for the caller to stop."""
    deadline = Deadline(time.monotonic() + args.time_limit)
    xfer = xfer_command()
    s = setup(args, workdir, procs, deadline, xfer, report, sparse_data(args.quick))
    cert, key, how = make_cert(workdir, deadline.left())
    report.notes.append(f"TLS: self-signed P-256 certificate for ::1 made with {how}")
    tls, tls_vdi = start_tls(s, (cert, key))
    report.notes.append(f"xfer start-up (`xfer --help`, median of 3): {startup(xfer, 3):.3f} s")
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
    tools = ["curl", "iperf3", "openssl", "nginx"] + (["socat"] if args.sink == "socat" else [])
    missing = [t for t in tools if find_tool(t) is None]
    if missing:
        print(f"vdi_transfer: missing {', '.join(missing)} (make bench installs them)")
        return 1
    parent = args.dir or Path(tempfile.gettempdir())
    need = space_needed(args.size, args.quick)
    try:
        free = check_space(parent, need)
    except BenchError as e:
        print(f"vdi_transfer: {e}")
        return 1
    procs = Processes()
    report = Report()
    failure = None
    with terminated_as_exit(), work_directory(parent, "vdi-bench-") as workdir:
        try:
            print_header(
                "vdi_transfer benchmark: xfer serve's VDI export/import vs nginx, iperf3, a sink",
                xfer_command(),
                ("curl", "nginx", "iperf3", "socat", "openssl"),
                workdir,
            )
            print(
                f"runs:     {args.size // MIB} MiB transfers; {args.runs} runs per command, "
                "interleaved, medians judged; os.sync() and the inputs read into the cache "
                "before each"
            )
            print()
            print(f"space:    {free // MIB} MiB free in {parent}, {need // MIB} MiB needed")
            print(flush=True)
            bench(args, workdir, procs, report)
        except BenchError as e:
            failure = str(e)
        finally:
            procs.stop_all()
    print_report(report, args.quick)
    if failure:
        print()
        print(f"FAILED: {failure}")
        progress(f"vdi_transfer: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
