"""XenAPI values in XML-RPC, as xapi writes them, pure.

xapi's flavour of the standard: API ints travel as decimal strings and void as ``""``; a
``<value>`` has no whitespace between elements (Xen Orchestra's parser keeps it as text) and a
string no ``<string>`` element. The same text is what a task's ``result`` holds, so both the
RPC's envelopes and the host's tasks write values through here.
"""

from __future__ import annotations

import base64
import xmlrpc.client
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape


def to_wire(value: Any) -> Any:
    """An API value as xapi puts it on the XML-RPC wire: ints as strings, void as ``""``,
    times as ``DateTime``, sets as arrays."""
    if value is None:
        return ""
    if isinstance(value, bool | float | str | bytes):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return xmlrpc.client.DateTime(value)
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_wire(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} on the XML-RPC wire")


def value_xml(value: Any) -> str:
    """One ``<value>`` element for a wire value (see :func:`to_wire`)."""
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, str):
        return f"<value>{escape(value)}</value>"
    if isinstance(value, float):
        return f"<value><double>{value!r}</double></value>"
    if isinstance(value, bytes):
        encoded = base64.b64encode(value).decode()
        return f"<value><base64>{encoded}</base64></value>"
    if isinstance(value, xmlrpc.client.DateTime):
        return f"<value><dateTime.iso8601>{value.value}</dateTime.iso8601></value>"
    if isinstance(value, dict):
        members = "".join(
            f"<member><name>{escape(str(k))}</name>{value_xml(v)}</member>"
            for k, v in value.items()
        )
        return f"<value><struct>{members}</struct></value>"
    if isinstance(value, list):
        return f"<value><array><data>{''.join(value_xml(v) for v in value)}</data></array></value>"
    raise TypeError(f"cannot put {type(value).__name__} on the XML-RPC wire")


def encode_value(value: Any) -> str:
    """An API value as the ``<value>`` text a task's ``result`` carries (``""`` for void):
    a ref as xapi writes it, ``<value>OpaqueRef:...</value>``."""
    return "" if value is None else value_xml(to_wire(value))
