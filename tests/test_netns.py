"""The daemon in a network namespace of its own: addresses that appear while it serves
(as SLAAC or DHCPv6 would add them) show up in its PIFs. Needs root and ``ip netns``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ip, network_namespace, wait_until_sync
from test_serve import serving

pytestmark = pytest.mark.root

# Asks the daemon, from inside the namespace, for every PIF's device and IPv6 addresses.
CLIENT = """
import json, sys, xmlrpc.client
proxy = xmlrpc.client.ServerProxy(sys.argv[1])
session = proxy.session.login_with_password("root", "pw", "1.0", "netns-test")["Value"]
pifs = proxy.PIF.get_all_records(session)["Value"].values()
print(json.dumps({p["device"]: p["IPv6"] for p in pifs}))
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    """A fresh network namespace with its loopback up, removed afterwards."""
    with network_namespace("xfer-test") as name:
        yield name


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
    args = ("--listen", "[::1]:0", "--password", "pw", "--interface-poll", "0.2")
    with serving(tmp_path, *args, netns=namespace) as (_, (url,), _):
        assert url.startswith("http://[::1]:"), url
        assert pifs(namespace, url) == {"lo": ["::1/128"]}

        ip("-n", namespace, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", namespace, "addr", "add", "2001:db8:5::10/64", "dev", "v0", "nodad")

        def mirrored() -> dict[str, list[str]] | None:
            seen = pifs(namespace, url)
            return seen if seen.get("v0") == ["2001:db8:5::10/64"] else None

        seen = wait_until_sync(mirrored, what="2001:db8:5::10/64 in v0's PIF")
        assert set(seen) == {"lo", "v0", "v1"}

        ip("-n", namespace, "link", "del", "v0")  # takes its peer v1 along
        wait_until_sync(lambda: set(pifs(namespace, url)) == {"lo"}, what="v0 and v1's PIFs gone")
