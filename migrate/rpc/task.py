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

CLASS = "task"
FIELDS = (
    "uuid name_label name_description status progress result error_info created finished"
    " resident_on allowed_operations other_config"
)


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
    """Ask a pending task to stop: ``cancelling``, then ``cancelled`` once its work sees it
    (an ``Async.`` call before it starts, a transfer within its next progress report);
    OPERATION_NOT_ALLOWED for a task that is not pending."""
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
        finish_cancelled(api, uuid)
    return False


def finish(api: Api, uuid: str, result: Any = None, error: ApiError | None = None) -> None:
    """Record the outcome of a task's call (the task may have been destroyed meanwhile); as
    in xapi, a finished task's progress is 1.0 whatever the outcome."""
    fields: dict[str, Any] = {"progress": 1.0, "finished": time.time()}
    if error is not None:
        fields.update(status="failure", error_info=json.dumps(error.description))
    else:
        fields.update(status="success", result=encode_value(result))
    with contextlib.suppress(KeyError):  # destroyed meanwhile
        api.store.update("task", uuid, fields)


def finish_cancelled(api: Api, uuid: str) -> None:
    """Record that a task's work stopped because the task was cancelled."""
    with contextlib.suppress(KeyError):  # destroyed meanwhile
        api.store.update(
            "task",
            uuid,
            {"status": "cancelled", "progress": 1.0, "finished": time.time(), "error_info": "[]"},
        )


def set_progress(api: Api, uuid: str, progress: float) -> str | None:
    """Record a pending task's progress (0..1); the task's status (None if destroyed)."""
    try:
        row = api.store.get("task", uuid)
    except KeyError:
        return None
    if row["status"] == "pending" and abs(row["progress"] - progress) >= 0.001:
        api.store.update("task", uuid, {"progress": progress})
    return str(row["status"])


METHODS = {
    "task.destroy": destroy,
    "task.create": create,
    "task.cancel": cancel,
}
