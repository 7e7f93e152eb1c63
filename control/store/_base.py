"""What every store backend shares: the :class:`Store` protocol, :class:`StoreEvent`, and
:class:`BaseStore`, the in-memory state, event log and watch logic the backends build on."""

from __future__ import annotations

import asyncio
import bisect
import builtins
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from control.store._history import (
    AuditEntry,
    Change,
    HistoryEntry,
    HistoryLimits,
    audit_kept,
    audit_matches,
    entry,
    kept,
)
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError

Service: TypeAlias = config_pb2.Service
StoredService: TypeAlias = admin_pb2.StoredService
AppliedService: TypeAlias = admin_pb2.AppliedService
StoreProblem: TypeAlias = admin_pb2.StoreProblem

DEFAULT_MAX_LOG = 10_000
"""Events kept in memory for watchers; an older ``after_revision`` gets a resync."""


@dataclass(frozen=True)
class StoreEvent:
    """One change: ``service`` is the new content, or None when the service was deleted.

    All changes made by one write (an ``apply`` of several services, or one poll of a file
    directory) share one revision and are delivered one after another."""

    revision: int
    name: str
    service: Service | None

    @property
    def deleted(self) -> bool:
        return self.service is None


@runtime_checkable
class Store(Protocol):
    """A revisioned store of ``mesh.v1.Service`` messages, keyed by name.

    The store revision starts at 0 for an empty store and grows by at least 1 with every
    change; it never goes backwards, also across restarts of a persistent backend. Each
    service carries the revision of its last change. Messages returned are copies.
    """

    @property
    def revision(self) -> int:
        """Current store revision."""
        ...

    async def start(self) -> None:
        """Opens the store (loads its state); idempotent."""
        ...

    async def close(self) -> None:
        """Stops background work and ends every watch; idempotent."""
        ...

    async def list(self) -> tuple[int, builtins.list[StoredService]]:
        """The store revision and every service, sorted by name."""
        ...

    async def get(self, name: str) -> StoredService:
        """One service; raises NotFoundError."""
        ...

    async def apply(
        self, services: Sequence[Service], *, if_revision: int = 0, change: Change | None = None
    ) -> tuple[int, builtins.list[AppliedService]]:
        """Stores ``services`` all or nothing, under one new revision; returns the store
        revision and one AppliedService per service, in order. A service identical to the
        stored one is not rewritten and keeps its revision (``changed`` False). Each service
        written gets a history entry made from ``change`` (who, why, apply or rollback), in
        the same write.

        With ``if_revision`` > 0, raises ConflictError naming the first service whose
        revision is greater than ``if_revision`` (services that do not exist pass). Names must
        be non-empty and unique in the call (ConfigError otherwise); everything else is the
        caller's to validate (``mesh_core.validation.validate_service``)."""
        ...

    async def delete(self, name: str, *, if_revision: int = 0, change: Change | None = None) -> int:
        """Deletes a service and returns the new store revision; raises NotFoundError, and
        ConflictError when ``if_revision`` > 0 and the service changed after it. Leaves a
        history entry (action ``delete``)."""
        ...

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        """The kept history of ``name``, oldest first: one entry per write that changed it
        (within the store's :class:`HistoryLimits`); [] when there is none. A deleted
        service keeps its history."""
        ...

    async def record_audit(self, item: AuditEntry) -> None:
        """Keeps one audit entry (bounded by the store's :class:`HistoryLimits`)."""
        ...

    async def audit(self, since_ns: int = 0, service: str = "") -> builtins.list[AuditEntry]:
        """The kept audit entries, oldest first: from ``since_ns`` (ns since the epoch; 0:
        all) and naming ``service`` (empty: all)."""
        ...

    def watch(self, after_revision: int) -> AsyncIterator[StoreEvent]:
        """Every change with a revision greater than ``after_revision``, in revision order,
        then new changes as they happen, until the consumer stops iterating or the store is
        closed. Any number of watchers may run at once.

        When ``after_revision`` is older than what the store still remembers, the watch
        starts with a resync instead of the history: one put event for every current service
        changed after ``after_revision`` (with the revision of its last change) and one delete
        event for every service deleted after it, in revision order. Applying the events in
        order to the state as of ``after_revision`` always gives the current state; a consumer
        that starts from nothing should use ``list()`` then ``watch(revision)``, or
        ``watch(0)``."""
        ...

    def problems(self) -> builtins.list[StoreProblem]:
        """Store contents currently rejected (for example bad hand edits of a file store),
        which are kept out of force."""
        ...


def _copy_entry(item: HistoryEntry) -> HistoryEntry:
    out = admin_pb2.HistoryEntry()
    out.CopyFrom(item)
    return out


def copy_service(svc: Service) -> Service:
    out = config_pb2.Service()
    out.CopyFrom(svc)
    return out


@dataclass
class _Entry:
    service: Service
    revision: int


class BaseStore:
    """In-memory state shared by the backends: services with their revisions, deletion
    tombstones, a bounded event log since start, and the watch loop.

    Backends change state only through :meth:`_commit`, which assigns one new revision to a
    set of puts and deletes, logs the events and wakes the watchers."""

    def __init__(
        self, *, max_log: int = DEFAULT_MAX_LOG, history: HistoryLimits | None = None
    ) -> None:
        if max_log < 1:
            raise ValueError(f"max_log must be at least 1, got {max_log}")
        self.history_limits = history or HistoryLimits()
        # name -> its history, oldest first, within history_limits (pruned on each write).
        self._history: dict[str, builtins.list[HistoryEntry]] = {}
        self._audit: builtins.list[AuditEntry] = []
        self._history_dirty: set[str] = set()  # names whose history changed, for saving
        self._services: dict[str, _Entry] = {}
        # name -> revision of its deletion; lets a resync report deletes it no longer logs.
        self._tombstones: dict[str, int] = {}
        self._revision = 0
        self._log: builtins.list[StoreEvent] = []
        # Every event with a revision greater than _log_start is in _log.
        self._log_start = 0
        self._max_log = max_log
        self._changed = asyncio.Event()
        self._closed = False

    # -- reads ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    async def list(self) -> tuple[int, builtins.list[StoredService]]:
        self._check_open()
        return self._revision, [self._stored(name) for name in sorted(self._services)]

    async def get(self, name: str) -> StoredService:
        self._check_open()
        if name not in self._services:
            raise NotFoundError(f"service {name!r} not found")
        return self._stored(name)

    def problems(self) -> builtins.list[StoreProblem]:
        return []

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        self._check_open()
        entries = kept(self._history.get(name, []), self.history_limits)
        return [_copy_entry(e) for e in entries]

    async def record_audit(self, item: AuditEntry) -> None:
        self._check_open()
        copy = admin_pb2.AuditEntry()
        copy.CopyFrom(item)
        self._audit = audit_kept([*self._audit, copy], self.history_limits)
        await self._audit_changed()

    async def audit(self, since_ns: int = 0, service: str = "") -> builtins.list[AuditEntry]:
        self._check_open()
        self._audit = audit_kept(self._audit, self.history_limits)
        out = []
        for item in self._audit:
            if audit_matches(item, since_ns, service):
                copy = admin_pb2.AuditEntry()
                copy.CopyFrom(item)
                out.append(copy)
        return out

    async def _audit_changed(self) -> None:
        """Hook: the audit trail changed (a persistent backend saves it)."""

    async def watch(self, after_revision: int) -> AsyncIterator[StoreEvent]:
        cursor = after_revision
        while not self._closed:
            changed = self._changed  # taken before looking, so no change slips between
            batch: builtins.list[StoreEvent]
            if cursor < self._log_start:
                batch = self._resync_events(cursor)
                cursor = self._revision
            else:
                start = bisect.bisect_right(self._log, cursor, key=lambda e: e.revision)
                batch = self._log[start:]
                if batch:
                    cursor = batch[-1].revision
            if not batch:
                await changed.wait()
                continue
            for event in batch:
                service = None if event.service is None else copy_service(event.service)
                yield StoreEvent(event.revision, event.name, service)

    # -- helpers for the backends -------------------------------------------------------------

    def _stored(self, name: str) -> StoredService:
        entry = self._services[name]
        return admin_pb2.StoredService(service=entry.service, revision=entry.revision)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"{type(self).__name__} is closed")

    def _check_batch(self, services: Sequence[Service]) -> None:
        problems: builtins.list[str] = []
        seen: set[str] = set()
        for number, svc in enumerate(services, start=1):
            name: str = svc.name
            if not name:
                problems.append(f"service {number}: name: must not be empty")
            elif name in seen:
                problems.append(f"service {number} ({name}): name: given more than once")
            seen.add(name)
        if problems:
            raise ConfigError(problems)

    def _check_conflicts(self, names: Iterable[str], if_revision: int) -> None:
        if if_revision <= 0:
            return
        for name in names:
            entry = self._services.get(name)
            if entry is not None and entry.revision > if_revision:
                raise ConflictError(
                    f"service {name!r} changed at revision {entry.revision}, "
                    f"after revision {if_revision}"
                )

    def _changed_services(self, services: Sequence[Service]) -> builtins.list[Service]:
        """The services of ``services`` that differ from what is stored."""
        out = []
        for svc in services:
            entry = self._services.get(svc.name)
            if entry is None or entry.service != svc:
                out.append(svc)
        return out

    def _applied(
        self, services: Sequence[Service], changed: set[str]
    ) -> builtins.list[AppliedService]:
        return [
            admin_pb2.AppliedService(
                name=svc.name,
                revision=self._services[svc.name].revision,
                changed=svc.name in changed,
            )
            for svc in services
        ]

    def _commit(
        self, puts: Sequence[Service], deletes: Sequence[str], change: Change | None = None
    ) -> int:
        """Applies ``puts`` and ``deletes`` under one new revision, with a history entry
        each (from ``change``), and wakes the watchers. Returns the store revision
        (unchanged when there is nothing to do)."""
        if not puts and not deletes:
            return self._revision
        revision = self._revision + 1
        for svc in puts:
            stored = copy_service(svc)
            name: str = stored.name
            created = name not in self._services
            self._add_history(entry(name, revision, change, stored, created=created))
            self._services[name] = _Entry(stored, revision)
            self._tombstones.pop(name, None)
            self._log.append(StoreEvent(revision, name, stored))
        for name in deletes:
            del self._services[name]
            self._tombstones[name] = revision
            self._log.append(StoreEvent(revision, name, None))
            self._add_history(entry(name, revision, change, None, created=False))
        self._revision = revision
        self._trim_log()
        self._notify()
        return revision

    def _add_history(self, item: HistoryEntry) -> None:
        name: str = item.name
        self._history[name] = kept([*self._history.get(name, []), item], self.history_limits)
        self._history_dirty.add(name)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _trim_log(self) -> None:
        if len(self._log) <= self._max_log:
            return
        cut = len(self._log) - self._max_log
        # Never split a revision: a watcher resumes after whole revisions only.
        while cut < len(self._log) and self._log[cut].revision == self._log[cut - 1].revision:
            cut += 1
        self._log_start = self._log[cut - 1].revision
        del self._log[:cut]

    def _reset_log(self) -> None:
        """Forgets the history: watchers from before now get a resync."""
        self._log.clear()
        self._log_start = self._revision

    def _resync_events(self, after: int) -> builtins.list[StoreEvent]:
        events = [
            StoreEvent(entry.revision, name, entry.service)
            for name, entry in self._services.items()
            if entry.revision > after
        ]
        events += [
            StoreEvent(revision, name, None)
            for name, revision in self._tombstones.items()
            if revision > after and name not in self._services
        ]
        events.sort(key=lambda e: (e.revision, e.name))
        return events

    def _close(self) -> None:
        self._closed = True
        self._notify()
