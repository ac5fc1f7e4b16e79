"""The standard accessors of the DB-backed XenAPI classes, generated as xapi generates them from
its datamodel.

A class module declares ``CLASS`` (the XenAPI class), ``FIELDS`` (the keys of its records,
separated by spaces, as namedtuple's ``field_names``) and ``record(host, row)``; :func:`methods`
gives ``<CLASS>.get_all``, ``.get_all_records``, ``.get_record``, ``.get_by_uuid`` and one
``.get_<field>`` per field (that field of the record), the module's own ``METHODS``, if any,
overriding them. Only visible records are served (:mod:`migrate.rpc.refs`). Modules without
``CLASS`` serve their ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from migrate.formats.xapi import ref
from migrate.host.services import HostServices
from migrate.rpc import refs

Record = Callable[[HostServices, dict[str, Any]], dict[str, Any]]


def _named(function: Callable[..., Any], name: str, doc: str) -> Callable[..., Any]:
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    return function


def _getter(cls: str, record: Record, field: str) -> Callable[..., Any]:
    def getter(host: HostServices, session: str, self: str) -> Any:
        return record(host, refs.row(host.store, cls, self))[field]

    return _named(getter, f"get_{field}", f"The {field} of a {cls}.")


def methods(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The methods a class module serves by name: its generated accessors, then its
    ``METHODS``."""
    if not hasattr(module, "CLASS"):
        return dict(module.METHODS)
    cls: str = module.CLASS
    record: Record = module.record

    def get_all(host: HostServices, session: str) -> list[str]:
        return [ref(row["uuid"]) for row in host.store.all_visible(cls)]

    def get_all_records(host: HostServices, session: str) -> dict[str, dict[str, Any]]:
        return {ref(row["uuid"]): record(host, row) for row in host.store.all_visible(cls)}

    def get_record(host: HostServices, session: str, self: str) -> dict[str, Any]:
        return record(host, refs.row(host.store, cls, self))

    def get_by_uuid(host: HostServices, session: str, uuid: str) -> str:
        return refs.by_uuid(host.store, cls, uuid)

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
