"""XenAPI class ``task``: the progress and outcome of long-running operations.

The rows and the running operations are the host's (:mod:`migrate.host.tasks`); this is how
clients see and steer them. ``task.cancel`` reaches a running operation at once.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

from migrate.formats.xapi import ref
from migrate.host import tasks
from migrate.host.errors import FIELD_TYPE_ERROR, HANDLE_INVALID, ApiError
from migrate.host.services import HostServices
from migrate.rpc import refs
from migrate.state.store import NotFound

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


def record(host: HostServices, row: dict[str, Any]) -> dict[str, Any]:
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
        "resident_on": ref(host.uuid),
        "allowed_operations": [],
        "other_config": tasks.other_config_of(row),
    }


def destroy(host: HostServices, session: str, self: str) -> None:
    """Forget a task."""
    row = refs.row(host.store, "task", self)
    host.store.delete("task", row["uuid"])


def create(host: HostServices, session: str, label: Any, description: Any = "") -> str:
    """A new pending task (one a client reports its own work with); its ref."""
    if not isinstance(label, str):
        raise ApiError(FIELD_TYPE_ERROR, "label")
    uuid = str(uuidlib.uuid4())
    tasks.insert(host.store, uuid, session, label)
    return ref(uuid)


async def cancel(host: HostServices, session: str, self: str) -> None:
    """Ask a pending task to stop: ``cancelling``, then ``cancelled`` once its work stopped
    (at once for a running transfer or an ``Async.`` call not yet begun); a task a client
    made stays ``cancelling`` for that client to end. OPERATION_NOT_ALLOWED for a task that
    is not pending."""
    try:
        await host.tasks.cancel(refs.uuid_of("task", self))
    except NotFound:
        raise ApiError(HANDLE_INVALID, "task", self) from None


METHODS = {
    "task.destroy": destroy,
    "task.create": create,
    "task.cancel": cancel,
}
