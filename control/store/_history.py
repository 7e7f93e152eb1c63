"""What the stores keep besides the services: each service's history (one
``mesh.v1.HistoryEntry`` per write that changed it) and the audit trail of admin writes (one
``mesh.v1.AuditEntry`` each, done or refused).

Both are bounded. History: at most :attr:`HistoryLimits.count` entries per service and none
older than :attr:`HistoryLimits.age`, except that the newest entry of a service is always kept
(it is the version in force, or the delete that ended it). Audit: at most
:attr:`HistoryLimits.audit_count` entries and none older than :attr:`HistoryLimits.age`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from google.protobuf.message import Message

from mesh.v1 import admin_pb2, config_pb2

HistoryEntry: TypeAlias = admin_pb2.HistoryEntry
AuditEntry: TypeAlias = admin_pb2.AuditEntry

DEFAULT_HISTORY_COUNT = 50
DEFAULT_HISTORY_AGE = 30 * 24 * 3600.0
DEFAULT_AUDIT_COUNT = 1000

APPLY, DELETE, ROLLBACK = "apply", "delete", "rollback"
FILE_EDIT = "file"
"""``who`` of a change made by editing a file store's directory by hand."""


@dataclass(frozen=True)
class HistoryLimits:
    """How much history a store keeps: ``count`` entries per service, ``age`` seconds, and
    ``audit_count`` audit entries in all."""

    count: int = DEFAULT_HISTORY_COUNT
    age: float = DEFAULT_HISTORY_AGE
    audit_count: int = DEFAULT_AUDIT_COUNT

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"history count must be at least 1, got {self.count}")
        if not self.age > 0:
            raise ValueError(f"history age must be positive, got {self.age}")
        if self.audit_count < 1:
            raise ValueError(f"audit count must be at least 1, got {self.audit_count}")

    def cutoff_ns(self, now_ns: int | None = None) -> int:
        """Entries before this time (ns since the epoch) are too old."""
        return (time.time_ns() if now_ns is None else now_ns) - int(self.age * 1e9)


@dataclass(frozen=True)
class Change:
    """Who makes a write and why, for the history entries it leaves. ``action`` is
    ``apply`` or ``rollback`` for puts (a delete is always ``delete``); ``rollback_of`` the
    revision a rollback brings back."""

    who: str = ""
    message: str = ""
    action: str = APPLY
    rollback_of: int = 0


HAND_EDIT = Change(who=FILE_EDIT, message="edited on disk")


def entry(
    name: str,
    revision: int,
    change: Change | None,
    service: config_pb2.Service | None,
    *,
    created: bool,
    now_ns: int | None = None,
) -> HistoryEntry:
    """The history entry of one service's write (``service`` None: a delete)."""
    change = change or Change()
    out = admin_pb2.HistoryEntry(
        name=name,
        revision=revision,
        who=change.who,
        message=change.message,
        action=DELETE if service is None else change.action,
        created=created,
        rollback_of=change.rollback_of if service is not None else 0,
    )
    out.time.FromNanoseconds(time.time_ns() if now_ns is None else now_ns)
    if service is not None:
        out.service.CopyFrom(service)
    return out


def keep_mask(times_ns: Sequence[int], limits: HistoryLimits) -> list[bool]:
    """Which of a service's entries (their times, oldest first) stay within ``limits``: the
    newest always, the others when recent enough and among the newest ``count``."""
    cutoff = limits.cutoff_ns()
    total = len(times_ns)
    mask = [t >= cutoff for t in times_ns]
    if total:
        mask[-1] = True
    left = limits.count
    for index in range(total - 1, -1, -1):
        if mask[index]:
            mask[index] = left > 0
            left -= 1
    return mask


def kept(entries: Sequence[HistoryEntry], limits: HistoryLimits) -> list[HistoryEntry]:
    """``entries`` (oldest first) within ``limits`` (:func:`keep_mask`)."""
    mask = keep_mask([e.time.ToNanoseconds() for e in entries], limits)
    return [e for e, keep in zip(entries, mask, strict=True) if keep]


def audit_kept(entries: Sequence[AuditEntry], limits: HistoryLimits) -> list[AuditEntry]:
    cutoff = limits.cutoff_ns()
    out = [e for e in entries if e.time.ToNanoseconds() >= cutoff]
    return out[-limits.audit_count :]


def audit_matches(item: AuditEntry, since_ns: int, service: str) -> bool:
    if since_ns and item.time.ToNanoseconds() < since_ns:
        return False
    return not service or service in item.services


_M = TypeVar("_M", bound=Message)
_FORMAT = 1


def encode(entries: Iterable[Message]) -> bytes:
    """A JSON file of serialized entries (base64), for the file store."""
    items = [base64.b64encode(e.SerializeToString(deterministic=True)).decode() for e in entries]
    return (json.dumps({"format": _FORMAT, "entries": items}, indent=0) + "\n").encode()


def decode(data: bytes, kind: type[_M]) -> list[_M]:
    """The entries of :func:`encode`'s output; raises ValueError naming what is wrong."""
    try:
        raw: Any = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError("unknown format")
    items = raw.get("entries")
    if not isinstance(items, list):
        raise ValueError("entries: expected a list")
    out = []
    for number, item in enumerate(items, start=1):
        try:
            out.append(kind.FromString(base64.b64decode(item, validate=True)))
        except Exception as exc:  # binascii.Error, DecodeError, TypeError
            raise ValueError(f"entry {number}: {exc}") from exc
    return out
