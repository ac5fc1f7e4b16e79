"""XenAPI class ``task``: the progress and outcome of long-running operations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api


def _time(seconds: float | None) -> datetime:
    """A task time; xapi's epoch for one not yet reached."""
    return datetime.fromtimestamp(seconds or 0.0, UTC).replace(tzinfo=None)


def _error_info(text: str) -> list[str]:
    """The stored error description: a JSON array, or one plain message."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return [text]
    return [str(v) for v in value] if isinstance(value, list) else [text]


def record(api: Api, row: dict[str, Any]) -> dict[str, Any]:
    """The XenAPI record of a task row."""
    return {
        "uuid": row["uuid"],
        "name_label": row["name_label"],
        "name_description": "",
        "status": row["status"],
        "progress": float(row["progress"]),
        "result": row["result"],
        "error_info": _error_info(row["error_info"]),
        "created": _time(row["created"]),
        "finished": _time(row["finished"]),
        "resident_on": api.ref(api.host_uuid),
        "allowed_operations": [],
        "other_config": {},
    }


def get_all(api: Api, session: str) -> list[str]:
    """Every task's ref."""
    return [api.ref(row["uuid"]) for row in api.store.all("task")]


def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
    """Every task's record by ref."""
    return {api.ref(row["uuid"]): record(api, row) for row in api.store.all("task")}


def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
    """One task's record."""
    return record(api, api.row("task", self))


def get_by_uuid(api: Api, session: str, uuid: str) -> str:
    """The ref of the task ``uuid``."""
    return api.by_uuid("task", uuid)


def get_uuid(api: Api, session: str, self: str) -> str:
    """A task's uuid."""
    return str(api.row("task", self)["uuid"])


def get_name_label(api: Api, session: str, self: str) -> str:
    """A task's name."""
    return str(api.row("task", self)["name_label"])


def get_status(api: Api, session: str, self: str) -> str:
    """pending, success, failure, cancelling or cancelled."""
    return str(api.row("task", self)["status"])


def get_progress(api: Api, session: str, self: str) -> float:
    """How far a task is, 0.0 to 1.0."""
    return float(api.row("task", self)["progress"])


def get_result(api: Api, session: str, self: str) -> str:
    """A finished task's result (an XML-RPC ``<value>`` text)."""
    return str(api.row("task", self)["result"])


def get_error_info(api: Api, session: str, self: str) -> list[str]:
    """A failed task's error description."""
    return _error_info(api.row("task", self)["error_info"])


def destroy(api: Api, session: str, self: str) -> None:
    """Forget a task."""
    row = api.row("task", self)
    api.store.delete("task", row["uuid"])


METHODS = {
    "task.get_all": get_all,
    "task.get_all_records": get_all_records,
    "task.get_record": get_record,
    "task.get_by_uuid": get_by_uuid,
    "task.get_uuid": get_uuid,
    "task.get_name_label": get_name_label,
    "task.get_status": get_status,
    "task.get_progress": get_progress,
    "task.get_result": get_result,
    "task.get_error_info": get_error_info,
    "task.destroy": destroy,
}
