"""XenAPI's two wire protocols, pure: XML-RPC (``/``, ``/RPC2``, ``/xmlrpc``) and JSON-RPC.

Every XML-RPC result is a struct, ``{"Status": "Success", "Value": v}`` or ``{"Status":
"Failure", "ErrorDescription": [code, param, ...]}``; API ints travel as decimal strings and
void as ``""`` (xapi's wire protocol). JSON-RPC 2.0 carries values as JSON and API errors as
``{"code": 1, "message": CODE, "data": [params]}``; requests that are not JSON-RPC at all get
the protocol's own errors (-32700, -32600). Marshalling is the standard library's.
"""

from __future__ import annotations

import base64
import json
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from xml.parsers.expat import ExpatError
from xml.sax.saxutils import escape

Protocol = Literal["xmlrpc", "jsonrpc"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


class ApiError(Exception):
    """A XenAPI failure: an error code and its string parameters (``ErrorDescription``)."""

    def __init__(self, code: str, *params: object) -> None:
        self.code = code
        self.params = [str(p) for p in params]
        super().__init__(code, *self.params)

    @property
    def description(self) -> list[str]:
        """``[code, param, ...]`` as it travels."""
        return [self.code, *self.params]


class ProtocolError(Exception):
    """A request that is not a well-formed call of its protocol at all."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Call:
    """One decoded call: ``session.login_with_password`` and its parameters."""

    method: str
    params: list[Any]
    protocol: Protocol
    id: Any = field(default=None)
    """The JSON-RPC request id (None for XML-RPC)."""


def decode_xmlrpc(body: bytes) -> Call:
    """An XML-RPC ``methodCall``; ProtocolError when it is not one."""
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except (ExpatError, xmlrpc.client.ResponseError, ValueError, TypeError, IndexError) as e:
        raise ProtocolError(PARSE_ERROR, f"malformed XML-RPC request: {e}") from None
    if not method:
        raise ProtocolError(INVALID_REQUEST, "XML-RPC request without a methodName")
    return Call(method, list(params), "xmlrpc")


def encode_xmlrpc(result: Any = None, error: ApiError | None = None) -> bytes:
    """The ``methodResponse`` for a result (None for void) or an API error."""
    if error is not None:
        body: dict[str, Any] = {"Status": "Failure", "ErrorDescription": error.description}
    else:
        body = {"Status": "Success", "Value": _to_xmlrpc(result)}
    return (
        '<?xml version="1.0"?><methodResponse><params><param>'
        f"{_xml_value(body)}</param></params></methodResponse>"
    ).encode()


def _xml_value(value: Any) -> str:
    """One XML-RPC ``<value>`` as xapi writes it: no whitespace between elements (Xen
    Orchestra's parser keeps it as text), strings without a ``<string>`` element."""
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
            f"<member><name>{escape(str(k))}</name>{_xml_value(v)}</member>"
            for k, v in value.items()
        )
        return f"<value><struct>{members}</struct></value>"
    if isinstance(value, list):
        return f"<value><array><data>{''.join(_xml_value(v) for v in value)}</data></array></value>"
    raise TypeError(f"cannot put {type(value).__name__} on the XML-RPC wire")


def encode_xmlrpc_protocol_error(error: ProtocolError) -> bytes:
    """An XML-RPC fault for a request that could not be read as a call."""
    fault = xmlrpc.client.Fault(error.code, error.message)
    return xmlrpc.client.dumps(fault, methodresponse=True, encoding="utf-8").encode()


def _to_xmlrpc(value: Any) -> Any:
    """API values as xapi puts them on the XML-RPC wire: ints as strings, void as ``""``."""
    if value is None:
        return ""
    if isinstance(value, bool | float | str | bytes):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return xmlrpc.client.DateTime(value)
    if isinstance(value, dict):
        return {str(k): _to_xmlrpc(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_xmlrpc(v) for v in value]
    raise TypeError(f"cannot put {type(value).__name__} on the XML-RPC wire")


def decode_jsonrpc(body: bytes) -> Call:
    """A JSON-RPC request object; ProtocolError when it is not one."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(PARSE_ERROR, f"malformed JSON: {e}") from None
    if not isinstance(request, dict):
        raise ProtocolError(INVALID_REQUEST, "a JSON-RPC request is an object")
    method, params = request.get("method"), request.get("params", [])
    if not isinstance(method, str) or not method:
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC request without a method")
    if not isinstance(params, list):
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC params must be an array")
    return Call(method, params, "jsonrpc", request.get("id"))


def encode_jsonrpc(
    request_id: Any, result: Any = None, error: ApiError | ProtocolError | None = None
) -> bytes:
    """The JSON-RPC 2.0 response for a result, an API error or a protocol error."""
    response: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if isinstance(error, ApiError):
        response["error"] = {"code": 1, "message": error.code, "data": error.params}
    elif isinstance(error, ProtocolError):
        response["error"] = {"code": error.code, "message": error.message}
    else:
        response["result"] = _to_json(result)
    return json.dumps(response, separators=(",", ":")).encode()


def _to_json(value: Any) -> Any:
    """API values as JSON: void as ``""``, sets as arrays, times in ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y%m%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_to_json(v) for v in value]
    return value


def encode_value(value: Any) -> str:
    """A value as the XML-RPC ``<value>`` text a task's ``result`` carries (``""`` for void);
    a string as xapi writes it, ``<value>OpaqueRef:...</value>``."""
    return "" if value is None else _xml_value(_to_xmlrpc(value))
