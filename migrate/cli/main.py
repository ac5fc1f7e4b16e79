"""``xfer``: the entry point. Parses the command line (:mod:`migrate.cli.commands`), runs the
command, and reports a failure the user can act on as one line, ``xfer: error: ...``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from migrate.cli.commands import register

USER_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError)
"""Failures reported as one line (a file, a host or a value that is not as it should be)."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``xfer`` argument parser; builds without importing any command."""
    parser = argparse.ArgumentParser(
        prog="xfer", description="Live migration and VM/VDI transfer for Xen-style hosts."
    )
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
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
    except (*USER_ERRORS, *_loaded_errors()) as e:
        text = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"xfer: error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _loaded_errors() -> tuple[type[Exception], ...]:
    """``VhdError`` if the command loaded the VHD library (one that did not cannot raise it):
    importing it here would load numpy for every command."""
    errors = sys.modules.get("vhd.errors")
    return (errors.VhdError,) if errors is not None else ()


if __name__ == "__main__":
    sys.exit(main())
