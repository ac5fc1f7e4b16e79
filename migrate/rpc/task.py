"""XenAPI class ``task``: the progress and outcome of long-running operations."""

from __future__ import annotations

import contextlib
import json
import time
import uuid as uuidlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from migrate.rpc.codec import ApiError, encode_value

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


def create(api: Api, session: str, label: Any, description: Any = "") -> str:
    """A new pending task (one a client reports its own work with); its ref."""
    if not isinstance(label, str):
        raise ApiError("FIELD_TYPE_ERROR", "label")
    return api.ref(start(api, session, label))


def cancel(api: Api, session: str, self: str) -> None:
    """Ask a pending task to stop: ``cancelling``, then ``cancelled`` once its call sees it
    (before it starts its work); OPERATION_NOT_ALLOWED for a task that is not pending."""
    row = api.row("task", self)
    if row["status"] == "cancelling":
        return
    if row["status"] != "pending":
        raise ApiError("OPERATION_NOT_ALLOWED", f"task {row['uuid']} is {row['status']}")
    api.store.update("task", row["uuid"], {"status": "cancelling"})


# The life of the task of an ``Async.`` call


def start(api: Api, session: str, name_label: str) -> str:
    """Store a new pending task; its uuid."""
    uuid = str(uuidlib.uuid4())
    api.store.insert(
        "task",
        {
            "uuid": uuid,
            "name_label": name_label,
            "session": session,
            "status": "pending",
            "progress": 0.0,
            "result": "",
            "error_info": "",
            "created": time.time(),
            "finished": None,
        },
    )
    return uuid


def begin(api: Api, uuid: str) -> bool:
    """Whether the task's work may start: False (and the task ``cancelled``) once it is
    being cancelled, False when it was destroyed meanwhile."""
    try:
        status = api.store.get("task", uuid)["status"]
    except KeyError:
        return False
    if status == "pending":
        return True
    if status == "cancelling":
        api.store.update("task", uuid, {"status": "cancelled", "finished": time.time()})
    return False


def finish(api: Api, uuid: str, result: Any = None, error: ApiError | None = None) -> None:
    """Record the outcome of a task's call (the task may have been destroyed meanwhile)."""
    fields: dict[str, Any] = {"progress": 1.0, "finished": time.time()}
    if error is not None:
        fields.update(status="failure", error_info=json.dumps(error.description))
    else:
        fields.update(status="success", result=encode_value(result))
    with contextlib.suppress(KeyError):  # destroyed meanwhile
        api.store.update("task", uuid, fields)


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
    "task.create": create,
    "task.cancel": cancel,
}
