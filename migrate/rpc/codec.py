"""XenAPI's two wire protocols, pure: XML-RPC (``/``, ``/RPC2``, ``/xmlrpc``) and JSON-RPC.

Every XML-RPC result is a struct, ``{"Status": "Success", "Value": v}`` or ``{"Status":
"Failure", "ErrorDescription": [code, param, ...]}``; API ints travel as decimal strings and
void as ``""`` (xapi's wire protocol). JSON-RPC 2.0 carries values as JSON and API errors as
``{"code": 1, "message": CODE, "data": [params]}``; requests that are not JSON-RPC at all get
the protocol's own errors (-32700, -32600). Marshalling is the standard library's.
"""

from __future__ import annotations

import json
import math
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from migrate.formats.xmlrpc import to_wire, value_xml
from migrate.host.errors import ApiError

Protocol = Literal["xmlrpc", "jsonrpc"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


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


def decode_xmlrpc(body: bytes | bytearray) -> Call:
    """An XML-RPC ``methodCall``; ProtocolError when it is not one (a ``methodResponse`` or a
    fault included, and whatever the XML parser refuses: an unknown encoding, a value it
    cannot convert)."""
    try:
        params, method = xmlrpc.client.loads(body, use_builtin_types=True)
    except xmlrpc.client.Fault:
        raise ProtocolError(INVALID_REQUEST, "an XML-RPC fault is not a call") from None
    except Exception as e:  # expat, and the unmarshaller's own: any of them means malformed
        raise ProtocolError(PARSE_ERROR, f"malformed XML-RPC request: {_one_line(e)}") from None
    if not method:
        raise ProtocolError(INVALID_REQUEST, "XML-RPC request without a methodName")
    return Call(method, list(params), "xmlrpc")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


def encode_xmlrpc(result: Any = None, error: ApiError | None = None) -> bytes:
    """The ``methodResponse`` for a result (None for void) or an API error."""
    if error is not None:
        body: dict[str, Any] = {"Status": "Failure", "ErrorDescription": error.description}
    else:
        body = {"Status": "Success", "Value": to_wire(result)}
    return (
        '<?xml version="1.0"?><methodResponse><params><param>'
        f"{value_xml(body)}</param></params></methodResponse>"
    ).encode()


def encode_xmlrpc_protocol_error(error: ProtocolError) -> bytes:
    """An XML-RPC fault for a request that could not be read as a call."""
    fault = xmlrpc.client.Fault(error.code, error.message)
    return xmlrpc.client.dumps(fault, methodresponse=True, encoding="utf-8").encode()


def decode_jsonrpc(body: bytes | bytearray) -> Call:
    """A JSON-RPC request object; ProtocolError when it is not one."""
    try:
        request = json.loads(body, parse_constant=_not_a_number, parse_float=_finite)
    except (ValueError, RecursionError) as e:  # decoding, syntax, int digits, NaN, nesting
        raise ProtocolError(PARSE_ERROR, f"malformed JSON: {_one_line(e)}") from None
    if not isinstance(request, dict):
        raise ProtocolError(INVALID_REQUEST, "a JSON-RPC request is an object")
    method, params = request.get("method"), request.get("params", [])
    if not isinstance(method, str) or not method:
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC request without a method")
    if not isinstance(params, list):
        raise ProtocolError(INVALID_REQUEST, "JSON-RPC params must be an array")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | float | None):
        raise ProtocolError(INVALID_REQUEST, "a JSON-RPC id is a string, a number or null")
    return Call(method, params, "jsonrpc", request_id)


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} out of range")
    return number


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
    return json.dumps(response, separators=(",", ":"), allow_nan=False).encode()


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
