"""xapi's names as both ends of a connection use them: the HTTP endpoints, the disk formats,
refs, the user, and the port ``xfer serve`` listens on when told none.

Defined here once: the daemon, its RPC and transfers, and the command line all import them.
"""

from __future__ import annotations

import uuid as uuidlib

DEFAULT_PORT = 8080
"""The port of ``xfer serve``, and of a host whose text names none."""
DEFAULT_USER = "root"
"""The one user a host knows, as in xapi."""

XMLRPC_PATHS = ("/", "/RPC2", "/xmlrpc")
"""Where XenAPI is served as XML-RPC."""
JSONRPC_PATH = "/jsonrpc"
"""Where XenAPI is served as JSON-RPC."""
EXPORT_PATH = "/export_raw_vdi"
IMPORT_PATH = "/import_raw_vdi"
VM_SAVE_PATH = "/vm_save"
VM_RESTORE_PATH = "/vm_restore"

FORMATS = {"raw": "application/octet-stream", "vhd": "application/vhd"}
"""The disk formats of a transfer (``format=``) and their content types, as xapi sends them."""

REF_PREFIX = "OpaqueRef:"
NULL_REF = "OpaqueRef:NULL"
"""The ref that names nothing."""


def ref(uuid: str) -> str:
    """The ref of the record ``uuid`` (``OpaqueRef:<uuid>``)."""
    return REF_PREFIX + uuid


def ref_uuid(text: object) -> str | None:
    """The uuid the ref ``text`` names (``OpaqueRef:<uuid>``, the uuid lower case and
    hyphenated); None when ``text`` is no such ref."""
    if not isinstance(text, str) or not text.startswith(REF_PREFIX):
        return None
    uuid = text[len(REF_PREFIX) :]
    try:
        return uuid if str(uuidlib.UUID(uuid)) == uuid else None
    except ValueError:
        return None
