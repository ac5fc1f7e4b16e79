"""The daemon in a network namespace of its own: addresses that appear while it serves
(as SLAAC or DHCPv6 would add them) show up in its PIFs. Needs root and ``ip netns``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import XFER, wait_until_sync

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent

# Asks the daemon, from inside the namespace, for every PIF's device and IPv6 addresses.
CLIENT = """
import json, sys, xmlrpc.client
proxy = xmlrpc.client.ServerProxy(sys.argv[1])
session = proxy.session.login_with_password("root", "pw", "1.0", "netns-test")["Value"]
pifs = proxy.PIF.get_all_records(session)["Value"].values()
print(json.dumps({p["device"]: p["IPv6"] for p in pifs}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with its loopback up, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace (CI runs as root)")
    name = f"xfer-test-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace here: {e.stderr.decode().strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _ip("netns", "del", name)


def pifs(namespace: str, url: str) -> dict[str, list[str]]:
    """Device -> IPv6 addresses, as the daemon in ``namespace`` reports them."""
    out = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT, url],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    result: dict[str, list[str]] = json.loads(out)
    return result


@pytest.mark.slow
def test_new_addresses_reach_the_pifs_while_serving(namespace: str, tmp_path: Path) -> None:
    command = ["ip", "netns", "exec", namespace, *XFER, "serve", "--state-dir", str(tmp_path)]
    command += ["--listen", "[::1]:0", "--password", "pw", "--interface-poll", "0.2"]
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("listening on http://[::1]:"), line
        url = line.removeprefix("listening on ")
        assert pifs(namespace, url) == {"lo": ["::1/128"]}

        _ip("-n", namespace, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", namespace, "addr", "add", "2001:db8:5::10/64", "dev", "v0", "nodad")

        def mirrored() -> dict[str, list[str]] | None:
            seen = pifs(namespace, url)
            return seen if seen.get("v0") == ["2001:db8:5::10/64"] else None

        seen = wait_until_sync(mirrored, what="2001:db8:5::10/64 in v0's PIF")
        assert set(seen) == {"lo", "v0", "v1"}

        _ip("-n", namespace, "link", "del", "v0")  # takes its peer v1 along
        wait_until_sync(lambda: set(pifs(namespace, url)) == {"lo"}, what="v0 and v1's PIFs gone")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
