"""``xfer``: the entry point and its subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from migrate.cli import rpc as rpc_commands
from migrate.cli import serve as serve_commands
from migrate.cli import transfer as transfer_commands
from migrate.cli import vhd as vhd_commands
from vhd.errors import VhdError


def build_parser() -> argparse.ArgumentParser:
    """The full ``xfer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="xfer", description="Live migration and VM/VDI transfer for Xen-style hosts."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    vhd_commands.register(commands)
    serve_commands.register(commands)
    rpc_commands.register(commands)
    transfer_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xfer`` with ``argv``; returns the exit status. Errors are one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (VhdError, OSError, ValueError) as e:
        text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"xfer: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
