"""The config store contract, one suite run against every backend: ``memory:``, ``file:`` (a
directory in the test's tmp dir) and ``etcd://`` (a real etcd on free loopback ports, one for
the module from the ``shared_etcd`` fixture, a prefix of its own per test; only that case is
e2e). Revisions are checked from the store's revision at the start: 0 for memory and file,
etcd's own for etcd, and every write adds exactly one. The history of each service and the
audit trail are part of the contract too.

What only one backend has stays with it: the file store's directory in
``tests/unit/test_store.py``, the memory store's log in the same file, etcd's key layout,
several writers, compaction and outages in ``tests/e2e/test_store_etcd.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from control.store import (
    Change,
    EtcdStore,
    FileStore,
    HistoryLimits,
    MemoryStore,
    Store,
    StoreEvent,
)
from control.store._base import BaseStore
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.backoff import Backoff
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError
from tests.conftest import eventually
from tests.e2e.conftest import EtcdServer

pytestmark = pytest.mark.timeout(60)

Revision = Callable[[], Awaitable[int]]


def svc(name: str, address: str = "10.0.0.1:50051") -> config_pb2.Service:
    service = config_pb2.Service(name=name)
    service.endpoints.add(address=address)
    return service


def open_backend(
    kind: str, tmp_path: Path, etcd: EtcdServer | None, prefix: str = "/test"
) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return FileStore(tmp_path / "store", poll_interval=0.05, settle=0.05)
    assert etcd is not None
    return EtcdStore(
        etcd.endpoint,
        prefix=prefix,
        backoff=Backoff(base=0.05, cap=0.3),
        start_timeout=5.0,
        op_timeout=3.0,
    )


def reopen(store: Store) -> Store:
    """Another store on the same data (a restarted control server): None for memory."""
    if isinstance(store, FileStore):
        return FileStore(store.directory, poll_interval=0.05, settle=0.05)
    if isinstance(store, EtcdStore):
        return EtcdStore(store.endpoints, prefix=store.prefix, start_timeout=5.0, op_timeout=3.0)
    raise AssertionError(f"{store!r} keeps nothing")


@pytest.fixture(params=["memory", "file", pytest.param("etcd", marks=pytest.mark.e2e)])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Revision]]:
    """A started store, and a function giving the revision its backend is at: the store's
    own counter for memory and file, etcd's revision for etcd."""
    # One etcd for the module (nothing here stops it), a prefix of its own per test.
    etcd: EtcdServer | None = None
    prefix = "/test"
    if request.param == "etcd":
        etcd = request.getfixturevalue("shared_etcd")
        prefix = request.getfixturevalue("etcd_prefix")
    store = open_backend(request.param, tmp_path, etcd, prefix)
    await store.start()

    async def revision() -> int:
        return await etcd.revision() if etcd is not None else store.revision

    yield store, revision
    await store.close()


@pytest.fixture
def store(backend: tuple[Store, Revision]) -> Store:
    return backend[0]


async def initial_revision(backend: tuple[Store, Revision]) -> int:
    """What a fresh store's revision must be: 0, or etcd's revision."""
    store, revision = backend
    return 0 if isinstance(store, MemoryStore | FileStore) else await revision()


async def take(
    events: AsyncIterator[StoreEvent], count: int, timeout: float = 10
) -> list[StoreEvent]:
    async def collect() -> list[StoreEvent]:
        out: list[StoreEvent] = []
        async for event in events:
            out.append(event)
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(collect(), timeout=timeout)


def summary(events: list[StoreEvent]) -> list[tuple[int, str, str | None]]:
    return [
        (e.revision, e.name, None if e.service is None else e.service.endpoints[0].address)
        for e in events
    ]


async def test_empty_store(backend: tuple[Store, Revision]) -> None:
    store, _ = backend
    assert store.revision == await initial_revision(backend)
    assert await store.list() == (store.revision, [])
    with pytest.raises(NotFoundError, match="orders"):
        await store.get("orders")
    with pytest.raises(NotFoundError, match="orders"):
        await store.delete("orders")
    assert store.problems() == []
    assert isinstance(store, Store)


async def test_apply_get_list_delete(backend: tuple[Store, Revision]) -> None:
    store, backend_revision = backend
    base = store.revision
    revision, applied = await store.apply([svc("orders"), svc("billing")])
    first = base + 1
    assert revision == first == store.revision == await backend_revision()
    assert [(a.name, a.revision, a.changed) for a in applied] == [
        ("orders", first, True),
        ("billing", first, True),
    ]
    stored = await store.get("orders")
    assert stored.service == svc("orders")
    assert stored.revision == first

    revision, applied = await store.apply([svc("orders", "10.0.0.2:50051")])
    second = base + 2
    assert revision == second
    assert [(a.name, a.revision, a.changed) for a in applied] == [("orders", second, True)]

    revision, services = await store.list()
    assert revision == second
    assert [(s.service.name, s.revision) for s in services] == [
        ("billing", first),
        ("orders", second),
    ]
    assert services[1].service.endpoints[0].address == "10.0.0.2:50051"

    third = base + 3
    assert await store.delete("billing") == third == store.revision
    with pytest.raises(NotFoundError):
        await store.get("billing")
    revision, services = await store.list()
    assert revision == third
    assert [s.service.name for s in services] == ["orders"]


async def test_returned_messages_are_copies(store: Store) -> None:
    original = svc("orders")
    await store.apply([original])
    original.endpoints[0].address = "10.9.9.9:1"
    stored = await store.get("orders")
    stored.service.endpoints[0].address = "10.8.8.8:1"
    assert (await store.get("orders")).service == svc("orders")


async def test_identical_apply_is_unchanged(backend: tuple[Store, Revision]) -> None:
    store, backend_revision = backend
    first, _ = await store.apply([svc("orders"), svc("billing")])
    revision, applied = await store.apply([svc("orders"), svc("billing")])
    assert revision == first == store.revision == await backend_revision()  # nothing written
    assert [(a.name, a.revision, a.changed) for a in applied] == [
        ("orders", first, False),
        ("billing", first, False),
    ]
    revision, applied = await store.apply([svc("orders"), svc("billing", "10.0.0.3:50051")])
    assert revision == first + 1
    assert [(a.name, a.revision, a.changed) for a in applied] == [
        ("orders", first, False),
        ("billing", first + 1, True),
    ]


async def test_if_revision_conflict(store: Store) -> None:
    base = store.revision
    r1, _ = await store.apply([svc("orders")])
    r2, _ = await store.apply([svc("billing")])
    r3, _ = await store.apply([svc("orders", "10.0.0.2:50051")], if_revision=r1)
    assert (r1, r2, r3) == (base + 1, base + 2, base + 3)
    with pytest.raises(ConflictError, match=rf"'orders' changed at revision {r3}"):
        await store.apply(
            [svc("billing", "10.0.0.4:1"), svc("orders", "10.0.0.4:1")], if_revision=r2
        )
    # all or nothing: billing was not written either
    assert (await store.get("billing")).service == svc("billing")
    assert store.revision == r3
    # a service that does not exist yet passes
    r4, _ = await store.apply([svc("new")], if_revision=r1)
    assert r4 == base + 4
    with pytest.raises(ConflictError, match="orders"):
        await store.delete("orders", if_revision=r2)
    assert await store.delete("orders", if_revision=r3) == base + 5


async def test_bad_batch_refused(store: Store) -> None:
    before = store.revision
    with pytest.raises(ConfigError, match="more than once"):
        await store.apply([svc("orders"), svc("orders", "10.0.0.2:1")])
    with pytest.raises(ConfigError, match="empty"):
        await store.apply([config_pb2.Service()])
    assert store.revision == before
    assert await store.list() == (before, [])


async def test_watch_delivers_every_change_to_concurrent_watchers(store: Store) -> None:
    base = store.revision
    r1, _ = await store.apply([svc("orders")])  # before the watch revision
    r2, _ = await store.apply([svc("billing")])
    first, second = store.watch(r1), store.watch(r1)
    tasks = [asyncio.create_task(take(first, 5)), asyncio.create_task(take(second, 5))]
    await asyncio.sleep(0.05)
    r3, _ = await store.apply([svc("orders", "10.0.0.2:1"), svc("shipping")])
    r4 = await store.delete("billing")
    r5, _ = await store.apply([svc("billing", "10.0.0.5:1")])
    assert [r1, r2, r3, r4, r5] == [base + n for n in range(1, 6)]
    expected = [
        (r2, "billing", "10.0.0.1:50051"),
        (r3, "orders", "10.0.0.2:1"),
        (r3, "shipping", "10.0.0.1:50051"),
        (r4, "billing", None),
        (r5, "billing", "10.0.0.5:1"),
    ]
    results = await asyncio.gather(*tasks)
    assert [summary(r) for r in results] == [expected, expected]
    assert results[0][3].deleted


async def test_watch_from_now_waits_for_new_changes(store: Store) -> None:
    base = store.revision
    await store.apply([svc("orders")])
    task = asyncio.create_task(take(store.watch(store.revision), 1))
    await asyncio.sleep(0.1)
    assert not task.done()
    revision, _ = await store.apply([svc("billing")])
    assert revision == base + 2
    assert summary(await task) == [(revision, "billing", "10.0.0.1:50051")]


async def test_watch_ends_when_store_closes(store: Store) -> None:
    async def drain() -> list[StoreEvent]:
        return [event async for event in store.watch(0)]

    task = asyncio.create_task(drain())
    base = store.revision
    revision, _ = await store.apply([svc("orders")])
    assert revision == base + 1
    await asyncio.sleep(0.05)
    await store.close()
    events = await asyncio.wait_for(task, timeout=5)
    assert summary(events) == [(revision, "orders", "10.0.0.1:50051")]
    with pytest.raises(StoreUnavailableError):
        await store.list()


# -- history and audit -------------------------------------------------------------------------


def rows(entries: list[admin_pb2.HistoryEntry]) -> list[tuple[int, str, str, str, bool, str]]:
    return [
        (
            e.revision,
            e.action,
            e.who,
            e.message,
            e.created,
            e.service.endpoints[0].address if e.HasField("service") else "-",
        )
        for e in entries
    ]


async def test_history_keeps_every_change_with_who_and_why(store: Store) -> None:
    base = store.revision
    assert await store.history("orders") == []
    r1, _ = await store.apply([svc("orders")], change=Change("alice", "first"))
    r2, _ = await store.apply(
        [svc("orders", "10.0.0.2:1"), svc("billing")], change=Change("bob", "move")
    )
    await store.apply([svc("orders", "10.0.0.2:1")], change=Change("bob", "again"))  # unchanged
    r3 = await store.delete("orders", change=Change("carol", "gone"))
    r4, _ = await store.apply(
        [svc("orders", "10.0.0.2:1")], change=Change("dave", "back", "rollback", r2)
    )
    assert [r1, r2, r3, r4] == [base + n for n in range(1, 5)]
    history = await store.history("orders")
    assert rows(history) == [
        (r1, "apply", "alice", "first", True, "10.0.0.1:50051"),
        (r2, "apply", "bob", "move", False, "10.0.0.2:1"),
        (r3, "delete", "carol", "gone", False, "-"),
        (r4, "rollback", "dave", "back", True, "10.0.0.2:1"),
    ]
    assert history[-1].rollback_of == r2
    times = [e.time.ToNanoseconds() for e in history]
    assert times == sorted(times) and times[0] > 0
    assert rows(await store.history("billing")) == [
        (r2, "apply", "bob", "move", True, "10.0.0.1:50051")
    ]
    history[0].service.name = "changed"  # copies
    assert (await store.history("orders"))[0].service.name == "orders"


async def test_history_limits_keep_the_newest(store: Store) -> None:
    assert isinstance(store, BaseStore)
    store.history_limits = HistoryLimits(count=3)
    revisions = []
    for n in range(5):
        revision, _ = await store.apply([svc("orders", f"10.0.0.{n}:1")])
        revisions.append(revision)
    assert [e.revision for e in await store.history("orders")] == revisions[-3:]
    # by age: everything but the newest entry goes
    store.history_limits = HistoryLimits(count=3, age=0.3)
    last = await store.delete("orders")

    async def pruned() -> bool:
        return [e.revision for e in await store.history("orders")] == [last]

    await eventually(pruned, 10, "the history to age out but its newest entry")


# The stores that keep their data: the memory store keeps nothing across a restart, by design.
@pytest.mark.parametrize(
    "backend", ["file", pytest.param("etcd", marks=pytest.mark.e2e)], indirect=True
)
async def test_history_and_audit_outlive_a_restart(backend: tuple[Store, Revision]) -> None:
    store, _ = backend
    r1, _ = await store.apply([svc("orders")], change=Change("alice", "first"))
    r2 = await store.delete("orders", change=Change("bob", "gone"))
    item = admin_pb2.AuditEntry(who="bob", action="delete", services=["orders"], outcome="ok")
    item.time.GetCurrentTime()
    await store.record_audit(item)
    await store.close()
    again = reopen(store)
    await again.start()
    try:
        assert [(e.revision, e.action, e.who) for e in await again.history("orders")] == [
            (r1, "apply", "alice"),
            (r2, "delete", "bob"),
        ]
        assert await again.audit() == [item]
    finally:
        await again.close()


async def test_audit_is_kept_and_queried(store: Store) -> None:
    assert await store.audit() == []

    def audit(at_ns: int, services: list[str], outcome: str) -> admin_pb2.AuditEntry:
        item = admin_pb2.AuditEntry(who="alice", services=services, outcome=outcome)
        item.time.FromNanoseconds(at_ns)
        return item

    now = time.time_ns()
    old, mid, new = (
        audit(now - 60_000_000_000, ["orders"], "ok"),
        audit(now - 30_000_000_000, ["billing"], "refused"),
        audit(now, ["orders", "billing"], "ok"),
    )
    for item in (old, mid, new):
        await store.record_audit(item)
    assert await store.audit() == [old, mid, new]
    assert await store.audit(since_ns=now - 40_000_000_000) == [mid, new]
    assert await store.audit(service="orders") == [old, new]
    assert isinstance(store, BaseStore)
    store.history_limits = HistoryLimits(audit_count=2)
    await store.record_audit(audit(now + 1, ["shipping"], "ok"))
    assert [list(e.services) for e in await store.audit()] == [["orders", "billing"], ["shipping"]]
