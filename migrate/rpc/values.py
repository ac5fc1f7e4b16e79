"""API values as calls receive them: XML-RPC carries ints as decimal strings, JSON-RPC as
numbers; a value of the wrong type is xapi's ``FIELD_TYPE_ERROR`` naming the field."""

from __future__ import annotations

from typing import Any

from migrate.host.errors import FIELD_TYPE_ERROR, ApiError


def api_int(value: Any, field: str) -> int:
    """An API int: a JSON number, or the decimal string XML-RPC carries."""
    if isinstance(value, bool):
        raise ApiError(FIELD_TYPE_ERROR, field)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ApiError(FIELD_TYPE_ERROR, field)


def api_bool(value: Any, field: str) -> bool:
    """An API bool (XML-RPC's boolean, JSON's true/false)."""
    if not isinstance(value, bool):
        raise ApiError(FIELD_TYPE_ERROR, field)
    return value


def api_str(value: Any, field: str) -> str:
    """An API string."""
    if not isinstance(value, str):
        raise ApiError(FIELD_TYPE_ERROR, field)
    return value


def api_map(value: Any, field: str) -> dict[str, str]:
    """An API ``(string -> string) map``."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(FIELD_TYPE_ERROR, field)
    return dict(value)
