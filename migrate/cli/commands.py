"""Every ``xfer`` command's arguments, each command bound by name to the function that runs it.

Building the parser imports no command's implementation, so that ``xfer --help`` and a
command's start load only what that command needs (``xfer vhd info`` numpy, not httpx; the
host commands httpx and trio, not numpy): this module imports nothing heavy, and a
:class:`Runner` imports its function when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from migrate.addresses import parse_family
from migrate.cli.units import parse_size
from migrate.formats.xapi import DEFAULT_PORT, DEFAULT_USER, FORMATS

TIMEOUT = 30.0
"""The default of ``--timeout``: seconds to connect, and for each read or write."""


@dataclass(frozen=True)
class Runner:
    """A command's function, ``module.function``, imported only when the command runs."""

    module: str
    function: str

    def load(self) -> Callable[[argparse.Namespace], int]:
        """The function (its module imported now)."""
        return cast(
            Callable[[argparse.Namespace], int],
            getattr(importlib.import_module(self.module), self.function),
        )

    def __call__(self, args: argparse.Namespace) -> int:
        """Run the command with its parsed ``args``; its exit status."""
        return self.load()(args)


def register(commands: Any) -> None:
    """Add every command to ``commands`` (``add_subparsers``' result)."""
    _vhd(commands)
    _serve(commands)
    _xenapi(commands)
    _transfers(commands)
    _vms(commands)
    _migrate(commands)


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type whose ValueError message is the usage error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


_size = _parsed(parse_size)


def _positive(text: str) -> int:
    """A whole number > 0, for counts and milliseconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _vhd(commands: Any) -> None:
    group = commands.add_parser("vhd", help="inspect, check, create and convert VHD images")
    sub = group.add_subparsers(dest="vhd_command", required=True, metavar="ACTION")
    implementation = "migrate.cli.vhd"

    p = sub.add_parser("info", help="show an image's metadata")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=Runner(implementation, "info"))

    p = sub.add_parser("check", help="validate an image's structure (exit 1 on problems)")
    p.add_argument("file")
    p.set_defaults(run=Runner(implementation, "check_command"))

    p = sub.add_parser("create", help="create an empty dynamic, fixed or differencing image")
    p.add_argument("file")
    p.add_argument("--size", type=_size, help="virtual size: bytes or K/M/G/T (powers of 1024)")
    p.add_argument("--fixed", action="store_true", help="fixed (preallocated layout) image")
    p.add_argument("--parent", help="create a differencing image over PARENT")
    p.set_defaults(run=Runner(implementation, "create_command"))

    p = sub.add_parser(
        "convert",
        help="convert between raw and VHD, or make a delta",
        description="Convert SRC into DST. SRC is read as --from says; without it, a name "
        "ending in .vhd is a VHD, and any other file is a VHD when a valid footer ends or "
        "starts it, raw when nothing in it looks like a VHD. A file that shows VHD structures "
        "without a valid footer (a damaged VHD) is refused rather than read as raw: pass "
        "--from raw to read it as raw anyway. DST's format comes from --to or its extension "
        "(.vhd; .raw, .img, .bin). With --base, DST is a differencing VHD over BASE holding "
        "the blocks that differ from it.",
    )
    p.add_argument("src", metavar="SRC", help="input file: a raw disk or a VHD (with its parents)")
    p.add_argument("dst", metavar="DST", help="output file, or - for stdout")
    p.add_argument(
        "--from",
        dest="src_format",
        choices=tuple(FORMATS),
        help="read SRC as this format, whatever its name and content",
    )
    p.add_argument("--to", choices=tuple(FORMATS), help="output format (default: DST's extension)")
    p.add_argument("--base", help="write a differencing VHD of SRC relative to the VHD BASE")
    p.set_defaults(run=Runner(implementation, "convert_command"))


def _serve(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the host daemon (XenAPI over HTTP)")
    p.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="address to listen on: IPv4, IPv6 or zoned link-local, optionally with a port "
        f"(default port {DEFAULT_PORT}, 0 picks a free one); repeatable "
        f"(default: [::]:{DEFAULT_PORT}, dual-stack)",
    )
    p.add_argument(
        "--ipv6-only", action="store_true", help="the IPv6 wildcard [::] refuses IPv4 clients"
    )
    p.add_argument(
        "--primary-address-type",
        type=_parsed(parse_family),
        default="IPv6",
        metavar="{ipv4,ipv6}",
        help="the address family this host advertises (default: ipv6)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the database and the default SR live "
        "(default: $XDG_DATA_HOME/xfer or ~/.local/share/xfer)",
    )
    p.add_argument(
        "--sr", action="append", default=[], metavar="DIR", help="add an SR directory; repeatable"
    )
    p.add_argument(
        "--shared-sr",
        action="append",
        default=[],
        metavar="DIR",
        help="add an SR directory that other hosts attach too (the same SR uuid on each, kept"
        " in DIR/.xfer-sr.json; VMs whose disks are all on such SRs migrate memory only);"
        " repeatable",
    )
    p.add_argument(
        "--password",
        help="root's password (default: $XFER_PASSWORD, else the stored one, else generated)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve HTTPS (TLS 1.2+) with this PEM certificate (chain); needs --tls-key",
    )
    p.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    p.add_argument(
        "--interface-poll",
        type=float,
        metavar="SECONDS",
        help="how often the interfaces' addresses are read again (default 5)",
    )
    p.set_defaults(run=Runner("migrate.cli.serve", "serve_command"))


def _client_options() -> argparse.ArgumentParser:
    """The options every command talking to a host takes: host, credentials, TLS, timeout."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--host",
        required=True,
        metavar="HOST",
        help="the host: IPv4, IPv6 (bracketed with a port, zoned link-local as fe80::1%%eth0), "
        f"host:port, a name, or an http/https URL (default port {DEFAULT_PORT})",
    )
    common.add_argument("--user", help=f"user name (default: $XFER_USER, else {DEFAULT_USER})")
    common.add_argument("--password", help="password (default: $XFER_PASSWORD)")
    common.add_argument("--ca", metavar="FILE", help="verify an https host against FILE's CAs")
    common.add_argument(
        "--insecure", action="store_true", help="do not verify an https host's certificate"
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        metavar="SECONDS",
        help=f"connect and read timeout (default: {TIMEOUT:g})",
    )
    return common


def _xenapi(commands: Any) -> None:
    common = _client_options()
    implementation = "migrate.cli.rpc"

    group = commands.add_parser("host", help="query a host over XenAPI")
    sub = group.add_subparsers(dest="host_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "info", parents=[common], help="show the host's name, uuid, addresses and PIFs"
    )
    p.set_defaults(run=Runner(implementation, "host_info"))

    group = commands.add_parser("vdi", help="list, create and destroy a host's VDIs over XenAPI")
    sub = group.add_subparsers(dest="vdi_command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="list the VDIs (uuid, name, size, SR)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=Runner(implementation, "vdi_list"))
    p = sub.add_parser("create", parents=[common], help="create an empty VDI; prints its uuid")
    p.add_argument("--size", required=True, type=_size, help="virtual size, e.g. 10G")
    p.add_argument("--sr", metavar="UUID", help="the SR (default: the pool's default SR)")
    p.add_argument("--name", default="", help="the VDI's name label")
    p.set_defaults(run=Runner(implementation, "vdi_create"))
    p = sub.add_parser("destroy", parents=[common], help="destroy a VDI and its file")
    p.add_argument("--vdi", required=True, metavar="UUID", help="the VDI's uuid")
    p.set_defaults(run=Runner(implementation, "vdi_destroy"))


def _transfers(commands: Any) -> None:
    common = _client_options()
    common.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="raw",
        help="raw disk bytes or a VHD (default: raw)",
    )
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = commands.add_parser(
        "export",
        parents=[common],
        help="download a VDI's contents (raw or VHD)",
        description="Download a VDI's contents; prints `sha256 HEX  FILE` at the end.",
    )
    p.add_argument("--vdi", required=True, metavar="UUID", help="the VDI to export")
    p.add_argument(
        "--base", metavar="UUID", help="VHD only: a differencing image of what changed since UUID"
    )
    p.add_argument(
        "-o",
        "--output",
        default="-",
        metavar="FILE",
        help="where to write (default: - for stdout); written as FILE.part, renamed at the end",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="raw only: continue a cut export from FILE.part instead of starting over",
    )
    p.set_defaults(run=Runner("migrate.cli.export_client", "export_command"))

    p = commands.add_parser(
        "import",
        parents=[common],
        help="upload a raw disk or a VHD into a VDI",
        description="Upload into a VDI; prints `vdi UUID` and `sha256 HEX  FILE` at the end.",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--vdi", metavar="UUID", help="write into this existing VDI")
    target.add_argument("--sr", metavar="UUID", help="create a new VDI in this SR")
    p.add_argument("--name", help="the new VDI's name label (with --sr)")
    p.add_argument("file", metavar="FILE", help="the raw disk or VHD to send (- for stdin)")
    p.set_defaults(run=Runner("migrate.cli.import_client", "import_command"))


def _vms(commands: Any) -> None:
    common = _client_options()
    implementation = "migrate.cli.vm"
    vm = argparse.ArgumentParser(add_help=False)
    vm.add_argument("--vm", required=True, metavar="UUID", help="the VM's uuid")

    group = commands.add_parser("vm", help="create, run, save and restore a host's VMs")
    sub = group.add_subparsers(dest="vm_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "create",
        parents=[common],
        help="create a VM (halted); prints its uuid",
        description="Create a VM: a guest process with --memory of RAM running --workload "
        "(idle; uniform:RATE; hotset:RATE:SIZE; ledger; several joined with +, e.g. "
        "hotset:20M:64M+ledger). With --disk, a new VDI of that size is attached to it.",
    )
    p.add_argument("--memory", required=True, type=_size, help="RAM, e.g. 256M")
    p.add_argument("--vcpus", type=_positive, default=1, metavar="N", help="vCPUs (default 1)")
    p.add_argument("--name", default="", help="the VM's name label")
    p.add_argument("--workload", metavar="SPEC", help="what the guest runs (default: idle)")
    p.add_argument("--disk", type=_size, metavar="SIZE", help="attach a new disk of SIZE")
    p.add_argument("--sr", metavar="UUID", help="the SR of --disk (default: the default SR)")
    p.set_defaults(run=Runner(implementation, "vm_create"))

    p = sub.add_parser(
        "list", parents=[common], help="list the VMs (uuid, name, state, memory, host)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=Runner(implementation, "vm_list"))

    p = sub.add_parser("start", parents=[common, vm], help="start a halted VM")
    p.add_argument("--paused", action="store_true", help="leave it paused")
    p.set_defaults(run=Runner(implementation, "vm_start"))

    p = sub.add_parser("shutdown", parents=[common, vm], help="shut a VM down")
    p.add_argument("--force", action="store_true", help="hard shutdown: kill the guest")
    p.set_defaults(run=Runner(implementation, "vm_shutdown"))

    p = sub.add_parser("destroy", parents=[common, vm], help="forget a halted VM")
    p.add_argument("--force", action="store_true", help="shut it down hard first if it runs")
    p.add_argument("--disks", action="store_true", help="destroy its VDIs too")
    p.set_defaults(run=Runner(implementation, "vm_destroy"))

    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p = sub.add_parser(
        "save",
        parents=[common, vm, quiet],
        help="save a VM's suspend image to a file (the VM ends halted)",
        description="Pause the VM and write its suspend image (metadata, memory, CPU state) "
        "to FILE; prints `sha256 HEX  FILE`. The VM is halted afterwards.",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write (- for stdout); written as FILE.part, renamed at the end",
    )
    p.set_defaults(run=Runner("migrate.cli.vm_image", "save_command"))

    p = sub.add_parser(
        "restore",
        parents=[common, quiet],
        help="make a running VM of a suspend image; prints its uuid",
    )
    p.add_argument("file", metavar="FILE", help="the image `xfer vm save` wrote (- for stdin)")
    p.set_defaults(run=Runner("migrate.cli.vm_image", "restore_command"))


def _migrate(commands: Any) -> None:
    p = commands.add_parser(
        "migrate",
        parents=[_client_options()],
        help="live-migrate a VM to another host",
        description="Move a running VM from --host to --to while it runs: its memory is "
        "copied in pre-copy rounds, then the VM is paused, the rest copied and the VM resumed "
        "on the destination. Shows the progress on a terminal, then the rounds, the downtime, "
        "the total time and the throughput. Ctrl-C cancels: the VM stays on the source.",
    )
    p.add_argument("--vm", required=True, metavar="UUID", help="the VM's uuid")
    p.add_argument("--to", required=True, metavar="HOST", help="the destination host")
    p.add_argument("--to-user", metavar="USER", help="user on the destination (default: --user)")
    p.add_argument(
        "--to-password",
        metavar="PASSWORD",
        help="password on the destination (default: --password)",
    )
    p.add_argument(
        "--network",
        metavar="NET",
        help="the destination's network to migrate over: uuid, name or bridge "
        "(default: its management network)",
    )
    p.add_argument(
        "--max-downtime",
        type=_positive,
        metavar="MS",
        help="stop-and-copy once the rest fits this pause (default: the host's, 20 ms)",
    )
    p.add_argument(
        "--max-rounds", type=_positive, metavar="N", help="at most N pre-copy rounds (default 30)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare the guest's memory at the pause on both hosts (sha256)",
    )
    p.add_argument(
        "--no-live", action="store_true", help="pause the VM for the whole copy (no pre-copy)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=Runner("migrate.cli.migrate_client", "migrate_command"))
