"""Field-level differences between two versions of a service, for ``meshctl diff`` and the
CHANGE column of ``meshctl history``. Pure: plain data in (:func:`control.config.service_to_dict`
output, or None for a service that is not there), lines out.

Paths name fields as the YAML does: ``policy.timeout``, ``policy.retry.retry_on``. A list of
objects is keyed by each item's ``name`` (subsets, routes) or ``address`` (endpoints) when
every item has a distinct one, so that inserting an endpoint does not show every later one as
changed: ``endpoints[10.0.0.5:50051].zone``; other lists by position, or whole when they hold
plain values (``retry_on``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

Document = dict[str, Any]
ABSENT = "(none)"
_KEYS = ("name", "address")


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # None: not set
    new: Any

    def line(self) -> str:
        return f"{self.path}: {show(self.old)} -> {show(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "from": self.old, "to": self.new}


def show(value: Any) -> str:
    """A value as one short line: strings bare, the rest as compact JSON."""
    if value is None:
        return ABSENT
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _list_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in _KEYS:
        values = [item.get(key) for item in items]
        if all(isinstance(v, str) and v for v in values) and len(set(values)) == len(values):
            return key
    return None


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf paths of ``value`` and their values (lists of plain values are leaves)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{path}.{key}" if path else str(key)))
        return out or {path: {}} if path else out
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        key = _list_key(value)
        out = {}
        for index, item in enumerate(value):
            label = item[key] if key is not None else str(index)
            out.update(flatten(item, f"{path}[{label}]"))
        return out
    return {path: value}


def changes(old: Document | None, new: Document | None) -> list[FieldChange]:
    """What differs from ``old`` to ``new``, field by field, in a stable order (the new
    version's field order, then what only the old one had)."""
    before = flatten(old or {})
    after = flatten(new or {})
    out = [
        FieldChange(path, before.get(path), value)
        for path, value in after.items()
        if before.get(path) != value
    ]
    out += [FieldChange(path, value, None) for path, value in before.items() if path not in after]
    return out


def summary(
    old: Document | None,
    new: Document | None,
    *,
    known_before: bool = True,
    limit: int = 3,
) -> str:
    """One line for a history entry: ``created``, ``deleted``, the one change, or how many and
    which paths. ``known_before`` False: the version before is not kept (pruned)."""
    if new is None:
        return "deleted"
    if old is None:
        return "created" if known_before else "(earlier versions not kept)"
    found = changes(old, new)
    if not found:
        return "no change"
    if len(found) == 1:
        return found[0].line()
    paths = ", ".join(c.path for c in found[:limit])
    more = ", ..." if len(found) > limit else ""
    return f"{len(found)} changes: {paths}{more}"
