"""``xfer``'s parser and what a command loads: the parser imports no implementation, each
command only what it needs, and every command's function exists."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhd
from migrate.cli.commands import Runner
from migrate.cli.main import build_parser
from support import ROOT, xfer_env

HEAVY = ("httpx", "httpcore", "numpy", "trio")
"""Modules that cost a command's start much, each needed by some commands only."""

PROBE = f"""
import json, sys
from migrate.cli.main import build_parser, main
if sys.argv[1:] == ["build_parser"]:
    build_parser()
else:
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print("loaded", json.dumps([name for name in {HEAVY!r} if name in sys.modules]))
"""


def loaded(*args: str) -> set[str]:
    """Which of :data:`HEAVY` a fresh interpreter has loaded after ``xfer ARGS``."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=xfer_env(),
        check=False,
    )
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("loaded "), (proc.stdout, proc.stderr)
    return set(json.loads(last.removeprefix("loaded ")))


@pytest.mark.parametrize(
    "args",
    [
        ("build_parser",),
        ("--help",),
        ("vhd", "--help"),
        ("vhd", "info", "--help"),
        ("serve", "--help"),
        ("host", "info", "--help"),
        ("vdi", "list", "--help"),
        ("export", "--help"),
        ("import", "--help"),
        ("vm", "--help"),
        ("vm", "create", "--help"),
        ("vm", "save", "--help"),
        ("migrate", "--help"),
        ("export",),  # a usage error
    ],
)
def test_the_parser_loads_no_implementation(args: tuple[str, ...]) -> None:
    assert loaded(*args) == set()


@pytest.mark.slow
def test_each_command_loads_what_it_needs(tmp_path: Path) -> None:
    image = tmp_path / "disk.vhd"
    vhd.create(str(image), 1 << 20)
    assert loaded("vhd", "info", str(image)) == {"numpy"}
    host = ("--host", "[::1", "--password", "x")  # fails once running: the host text is bad
    assert loaded("host", "info", *host) == {"httpx", "httpcore", "trio"}
    missing = str(tmp_path / "missing")
    assert loaded("import", "--host", "[::1]:9", "--password", "x", "--vdi", "v", missing) == {
        "httpx",
        "httpcore",
        "trio",
    }
    assert not {"httpx", "httpcore"} & loaded("serve", "--tls-cert", "cert.pem")
    for command in (("vm", "list"), ("migrate", "--vm", "v", "--to", "[::1]:9")):
        assert loaded(*command, *host) == {"httpx", "httpcore", "trio"}, command


def runners(parser: argparse.ArgumentParser) -> Iterator[tuple[str, Runner]]:
    """Every command's runner, with the command's usage text."""
    run = parser.get_default("run")
    if run is not None:
        yield parser.prog, run
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from runners(sub)


def test_every_command_names_a_function() -> None:
    found = dict(runners(build_parser()))
    assert set(found) == {
        "xfer vhd info",
        "xfer vhd check",
        "xfer vhd create",
        "xfer vhd convert",
        "xfer serve",
        "xfer host info",
        "xfer vdi list",
        "xfer vdi create",
        "xfer vdi destroy",
        "xfer export",
        "xfer import",
        "xfer vm create",
        "xfer vm list",
        "xfer vm start",
        "xfer vm shutdown",
        "xfer vm destroy",
        "xfer vm save",
        "xfer vm restore",
        "xfer migrate",
    }
    for command, runner in found.items():
        assert isinstance(runner, Runner), command
        assert callable(runner.load()), command


def test_primary_address_type_is_a_family() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve"]).primary_address_type == "IPv6"
    for text, family in [("ipv4", "IPv4"), ("IPv4", "IPv4"), ("ipv6", "IPv6")]:
        args = parser.parse_args(["serve", "--primary-address-type", text])
        assert args.primary_address_type == family
