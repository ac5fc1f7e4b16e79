"""The standard accessors of the DB-backed XenAPI classes, generated as xapi generates them from
its datamodel.

A class module declares ``CLASS`` (the XenAPI class), ``FIELDS`` (the keys of its records,
separated by spaces, as namedtuple's ``field_names``) and ``record(api, row)``; :func:`methods`
gives ``<CLASS>.get_all``, ``.get_all_records``, ``.get_record``, ``.get_by_uuid`` and one
``.get_<field>`` per field (that field of the record), the module's own ``METHODS``, if any,
overriding them. Only visible records are served (see :meth:`~migrate.rpc.dispatch.Api.rows`,
:meth:`~migrate.rpc.dispatch.Api.row` and :meth:`~migrate.rpc.dispatch.Api.by_uuid`). Modules
without ``CLASS`` serve their ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from migrate.rpc.dispatch import Api

Record = Callable[["Api", dict[str, Any]], dict[str, Any]]


def _named(function: Callable[..., Any], name: str, doc: str) -> Callable[..., Any]:
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    return function


def _getter(cls: str, record: Record, field: str) -> Callable[..., Any]:
    def getter(api: Api, session: str, self: str) -> Any:
        return record(api, api.row(cls, self))[field]

    return _named(getter, f"get_{field}", f"The {field} of a {cls}.")


def methods(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The methods a class module serves by name: its generated accessors, then its
    ``METHODS``."""
    if not hasattr(module, "CLASS"):
        return dict(module.METHODS)
    cls: str = module.CLASS
    record: Record = module.record

    def get_all(api: Api, session: str) -> list[str]:
        return [api.ref(row["uuid"]) for row in api.rows(cls)]

    def get_all_records(api: Api, session: str) -> dict[str, dict[str, Any]]:
        return {api.ref(row["uuid"]): record(api, row) for row in api.rows(cls)}

    def get_record(api: Api, session: str, self: str) -> dict[str, Any]:
        return record(api, api.row(cls, self))

    def get_by_uuid(api: Api, session: str, uuid: str) -> str:
        return api.by_uuid(cls, uuid)

    generated = {
        f"{cls}.get_all": _named(get_all, "get_all", f"Every {cls}'s ref."),
        f"{cls}.get_all_records": _named(
            get_all_records, "get_all_records", f"Every {cls}'s record by ref."
        ),
        f"{cls}.get_record": _named(get_record, "get_record", f"One {cls}'s record."),
        f"{cls}.get_by_uuid": _named(get_by_uuid, "get_by_uuid", f"The ref of a {cls} by uuid."),
    }
    for field in module.FIELDS.split():
        generated[f"{cls}.get_{field}"] = _getter(cls, record, field)
    return generated | getattr(module, "METHODS", {})
