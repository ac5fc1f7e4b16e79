"""migrate.rpc.codec: XenAPI's XML-RPC and JSON-RPC envelopes, read back by the stdlib clients."""

from __future__ import annotations

import json
import xmlrpc.client
from datetime import datetime

import pytest

from migrate.host.errors import ApiError
from migrate.rpc.codec import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ProtocolError,
    decode_jsonrpc,
    decode_xmlrpc,
    encode_jsonrpc,
    encode_xmlrpc,
    encode_xmlrpc_protocol_error,
)


def test_xmlrpc_call_as_the_sdk_sends_it() -> None:
    body = xmlrpc.client.dumps(
        ("root", "secret", "1.0", "xfer-tests"), "session.login_with_password"
    ).encode()
    call = decode_xmlrpc(body)
    assert (call.method, call.params, call.protocol) == (
        "session.login_with_password",
        ["root", "secret", "1.0", "xfer-tests"],
        "xmlrpc",
    )


def test_xmlrpc_success_envelope_ints_as_strings_void_as_empty() -> None:
    record = {"uuid": "u", "virtual_size": 1 << 40, "sharable": False, "tags": ["a"], "x": None}
    (value,), method = xmlrpc.client.loads(encode_xmlrpc(record))
    assert method is None
    assert value == {
        "Status": "Success",
        "Value": {
            "uuid": "u",
            "virtual_size": "1099511627776",
            "sharable": False,
            "tags": ["a"],
            "x": "",
        },
    }
    (void,), _ = xmlrpc.client.loads(encode_xmlrpc(None))
    assert void == {"Status": "Success", "Value": ""}
    (refs,), _ = xmlrpc.client.loads(encode_xmlrpc({"OpaqueRef:1": {"n": 2}}))
    assert refs["Value"] == {"OpaqueRef:1": {"n": "2"}}


def test_xmlrpc_failure_envelope() -> None:
    error = ApiError("HANDLE_INVALID", "VDI", "OpaqueRef:nope")
    (value,), _ = xmlrpc.client.loads(encode_xmlrpc(error=error))
    assert value == {
        "Status": "Failure",
        "ErrorDescription": ["HANDLE_INVALID", "VDI", "OpaqueRef:nope"],
    }


def test_xmlrpc_dates() -> None:
    (value,), _ = xmlrpc.client.loads(encode_xmlrpc(datetime(2026, 11, 26, 8, 0, 0)))
    assert str(value["Value"]) == "20261126T08:00:00"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"<methodCall><methodName>x</methodName>", PARSE_ERROR),
        (b"not xml at all", PARSE_ERROR),
        (b"<methodCall><params/></methodCall>", INVALID_REQUEST),
        (
            b"<methodCall><methodName>x</methodName><params><param><value><i4>z</i4>"
            b"</value></param></params></methodCall>",
            PARSE_ERROR,
        ),
        # a response or a fault sent as a request
        (xmlrpc.client.dumps(("x",), methodresponse=True).encode(), INVALID_REQUEST),
        (xmlrpc.client.dumps(xmlrpc.client.Fault(1, "no")).encode(), INVALID_REQUEST),
        # an encoding the XML parser does not know
        (b'<?xml version="1.0" encoding="x-martian"?><methodCall/>', PARSE_ERROR),
        # an int of thousands of digits
        (
            b"<methodCall><methodName>x</methodName><params><param><value><int>"
            + b"9" * 5000
            + b"</int></value></param></params></methodCall>",
            PARSE_ERROR,
        ),
    ],
)
def test_malformed_xmlrpc_is_a_protocol_error(body: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_xmlrpc(body)
    assert info.value.code == code
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(encode_xmlrpc_protocol_error(info.value))
    assert fault.value.faultCode == code


def test_jsonrpc_round_trip() -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "method": "VDI.get_all", "params": ["OpaqueRef:s"], "id": 7}
    ).encode()
    call = decode_jsonrpc(body)
    assert (call.method, call.params, call.protocol, call.id) == (
        "VDI.get_all",
        ["OpaqueRef:s"],
        "jsonrpc",
        7,
    )
    assert json.loads(encode_jsonrpc(7, {"size": 1 << 40, "none": None})) == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"size": 1 << 40, "none": ""},
    }
    assert json.loads(encode_jsonrpc("a", error=ApiError("SESSION_INVALID", "OpaqueRef:s"))) == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": 1, "message": "SESSION_INVALID", "data": ["OpaqueRef:s"]},
    }
    assert decode_jsonrpc(b'{"method": "system.listMethods", "id": 1}').params == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{", PARSE_ERROR),
        (b"\xff\xfe", PARSE_ERROR),
        (b"[1, 2]", INVALID_REQUEST),
        (b'{"params": []}', INVALID_REQUEST),
        (b'{"method": "x", "params": {"a": 1}}', INVALID_REQUEST),
        (b'{"method": "x", "id": {"an": "object"}}', INVALID_REQUEST),
        (b'{"method": "x", "id": true}', INVALID_REQUEST),
        # numbers JSON cannot carry back: thousands of digits, NaN, infinities
        (b'{"method": "x", "id": ' + b"9" * 5000 + b"}", PARSE_ERROR),
        (b'{"method": "x", "id": NaN}', PARSE_ERROR),
        (b'{"method": "x", "id": -Infinity}', PARSE_ERROR),
        (b'{"method": "x", "id": 1e400}', PARSE_ERROR),
        (b'{"method": "x", "params": [1e400]}', PARSE_ERROR),
        # nested thousands deep
        (b'{"method": "x", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", PARSE_ERROR),
    ],
)
def test_malformed_jsonrpc_is_a_protocol_error(body: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_jsonrpc(body)
    assert info.value.code == code
    answer = encode_jsonrpc(None, error=info.value)
    response = json.loads(answer, parse_constant=_refuse)  # strict JSON: no NaN, no Infinity
    assert response["error"]["code"] == code and response["id"] is None


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in a JSON answer")


def test_api_error_parameters_are_strings() -> None:
    error = ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", "VDI.get_all", 1, 0)
    assert error.description == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VDI.get_all", "1", "0"]
