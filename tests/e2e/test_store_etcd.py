"""The etcd store against a real etcd: what only a shared, remote store has (key layout,
several writers, compaction, outages and failover). The contract every backend keeps, etcd
included, is tests/e2e/test_store_contract.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from control.store import EtcdStore, HistoryLimits, StoreEvent, open_store
from control.store.etcd import parse_etcd_url
from mesh.v1 import config_pb2
from mesh_core.backoff import Backoff
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError
from tests.conftest import eventually, free_port
from tests.e2e.conftest import EtcdRelay, EtcdServer

pytestmark = [pytest.mark.e2e]

FAST = {"start_timeout": 5.0, "op_timeout": 3.0}


def svc(name: str, address: str = "10.0.0.1:50051") -> config_pb2.Service:
    service = config_pb2.Service(name=name)
    service.endpoints.add(address=address)
    return service


def etcd_store(endpoints: str | list[str], prefix: str = "/test") -> EtcdStore:
    return EtcdStore(endpoints, prefix=prefix, backoff=Backoff(base=0.05, cap=0.3), **FAST)


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = etcd_store(etcd.endpoint)
    await s.start()
    yield s
    await s.close()


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


def summary(events: list[StoreEvent]) -> list[tuple[str, str | None]]:
    return [(e.name, None if e.service is None else e.service.endpoints[0].address) for e in events]


# -- starting ----------------------------------------------------------------------------------


async def test_must_be_started(etcd: EtcdServer) -> None:
    s = etcd_store(etcd.endpoint)
    with pytest.raises(StoreUnavailableError, match="not started"):
        await s.list()


# -- the key layout and the URL ----------------------------------------------------------------


async def test_key_layout_and_prefixes(etcd: EtcdServer) -> None:
    a, b = etcd_store(etcd.endpoint, "/team-a"), etcd_store(etcd.endpoint, "/team-b/")
    await a.start()
    await b.start()
    revision, _ = await a.apply([svc("orders")])
    async with etcd.client() as client:
        got = await client.get(b"/team-a/services/orders")
        assert got is not None
        assert got.value == svc("orders").SerializeToString(deterministic=True)
        assert got.mod_revision == revision
        history = await client.get(b"/team-a/history/orders/000000000001")
        keys = [kv.key for kv in await client.get_prefix(b"/")]
    # the history entry was written in the same transaction as the service
    assert history is not None and history.mod_revision == revision
    assert keys == [b"/team-a/history/orders/000000000001", b"/team-a/services/orders"]
    assert await b.list() == (b.revision, [])  # another prefix is another store
    await a.close()
    await b.close()


async def test_history_keys_are_pruned_and_a_write_fits_one_transaction(
    etcd: EtcdServer,
) -> None:
    s = EtcdStore(
        etcd.endpoint,
        prefix="/test",
        history=HistoryLimits(count=2),
        max_txn_ops=4,
        backoff=Backoff(base=0.05, cap=0.3),
        **FAST,
    )
    await s.start()
    try:
        for n in range(4):
            await s.apply([svc("orders", f"10.0.0.{n}:1"), svc("billing", f"10.0.0.{n}:2")])
        async with etcd.client() as client:
            keys = [kv.key for kv in await client.get_prefix(b"/test/history/orders/")]
        assert keys == [b"/test/history/orders/000000000003", b"/test/history/orders/000000000004"]
        assert [e.service.endpoints[0].address for e in await s.history("orders")] == [
            "10.0.0.2:1",
            "10.0.0.3:1",
        ]
        # two keys per changed service in one transaction: three services need 6 operations
        before = s.revision
        with pytest.raises(ConfigError, match=r"needs 6 operations .* allows 4 .*smaller batches"):
            await s.apply([svc("orders"), svc("billing"), svc("shipping")])
        assert s.revision == before and await s.history("shipping") == []
    finally:
        await s.close()


def test_open_store_etcd_urls() -> None:
    single = open_store("etcd://127.0.0.1:2379")
    assert isinstance(single, EtcdStore)
    assert (single.endpoints, single.prefix) == (["127.0.0.1:2379"], "/mesh")
    many = open_store("etcd://10.0.0.1:2379,10.0.0.2,[::1]:2380/prod/mesh/")
    assert isinstance(many, EtcdStore)
    assert many.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379", "[::1]:2380"]
    assert many.prefix == "/prod/mesh"
    assert parse_etcd_url("etcd://h:1/") == (["h:1"], "/mesh")
    for url in ("etcd:", "etcd:h:1", "etcd://", "etcd://h:x", "etcd://h:1,,h:2", "etcd://:1"):
        with pytest.raises(ConfigError, match=r"etcd://HOST:PORT|endpoint|host|port") as info:
            open_store(url)
        assert url in str(info.value)


# -- several control servers on one etcd -------------------------------------------------------


async def test_two_stores_see_each_others_writes(etcd: EtcdServer) -> None:
    a, b = etcd_store(etcd.endpoint), etcd_store(etcd.endpoint)
    await a.start()
    await b.start()
    watch_b = b.watch(b.revision)
    watch_a = a.watch(a.revision)
    r1, _ = await a.apply([svc("orders")])
    [event] = await take(watch_b, 1)
    assert (event.revision, event.name, event.service) == (r1, "orders", svc("orders"))
    assert (await b.get("orders")).revision == r1
    r2 = await b.delete("orders")
    r3, _ = await b.apply([svc("billing")])
    events = await take(watch_a, 3)
    assert [(e.revision, e.name, e.deleted) for e in events] == [
        (r1, "orders", False),
        (r2, "orders", True),
        (r3, "billing", False),
    ]
    assert await a.list() == await b.list()
    # b's view of orders is a's write: an if_revision from a's revision works from b
    r4, _ = await b.apply([svc("orders", "10.0.0.9:1")], if_revision=r3)
    await eventually(lambda: a.revision == r4, 10.0, "a to see b's write")
    assert (await a.get("orders")).service == svc("orders", "10.0.0.9:1")
    await a.close()
    await b.close()


async def test_concurrent_conditional_applies_one_wins(etcd: EtcdServer) -> None:
    a, b = etcd_store(etcd.endpoint), etcd_store(etcd.endpoint)
    await a.start()
    await b.start()
    base, _ = await a.apply([svc("orders")])
    await eventually(lambda: b.revision == base, 10.0, "b to see a's write")
    for round_ in range(5):
        results = await asyncio.gather(
            a.apply([svc("orders", f"10.1.{round_}.1:1")], if_revision=base),
            b.apply([svc("orders", f"10.2.{round_}.2:1")], if_revision=base),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, BaseException)]
        assert len(wins) == 1, results
        assert len(losses) == 1 and isinstance(losses[0], ConflictError), results
        revision, [applied] = wins[0]
        assert "orders" in str(losses[0]) and str(revision) in str(losses[0])
        winner = a if results[0] is wins[0] else b
        stored = await winner.get("orders")
        assert stored.revision == applied.revision == revision
        expected = f"10.{1 if winner is a else 2}.{round_}.{1 if winner is a else 2}:1"
        assert stored.service.endpoints[0].address == expected
        await eventually(
            lambda r=revision: a.revision >= r and b.revision >= r,  # type: ignore[misc]
            10.0,
            "both stores at the winning revision",
        )
        assert await a.list() == await b.list()
        base = revision
    await a.close()
    await b.close()


async def test_concurrent_plain_applies_lose_nothing(etcd: EtcdServer) -> None:
    stores = [etcd_store(etcd.endpoint) for _ in range(3)]
    for s in stores:
        await s.start()
    # every store writes its own services and a shared one, many times, at once
    await asyncio.gather(
        *(
            s.apply([svc(f"own-{i}-{n}"), svc("shared", f"10.0.{i}.{n}:1")])
            for n in range(4)
            for i, s in enumerate(stores)
        )
    )
    names = {f"own-{i}-{n}" for i in range(3) for n in range(4)} | {"shared"}
    for s in stores:

        async def holds_all(s: EtcdStore = s) -> bool:
            return len((await s.list())[1]) == len(names)

        await eventually(holds_all, 10.0, f"{s!r} to hold every service")
        _, services = await s.list()
        assert {x.service.name for x in services} == names
    assert len({str(await s.list()) for s in stores}) == 1
    for s in stores:
        await s.close()


# -- compaction, outages, failover -------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_compaction_past_the_watch_recovers(etcd: EtcdServer, etcd_relay: EtcdRelay) -> None:
    store = etcd_store(etcd_relay.endpoint)
    other = etcd_store(etcd.endpoint)
    await store.start()
    await other.start()
    await store.apply([svc("a"), svc("keep")])
    watch = store.watch(store.revision)
    etcd_relay.cut()  # the store's watch breaks and cannot come back
    await eventually(lambda: bool(store.problems()), 10.0, "a problem to be reported")
    await other.apply([svc("b", "10.0.0.1:1")])
    await other.apply([svc("b", "10.0.0.2:1")])
    await other.delete("a")
    await other.apply([svc("c")])
    await etcd.compact(await etcd.revision())
    etcd_relay.restore()
    # the history is gone: the store reads everything again and delivers the difference
    events = await take(watch, 3, timeout=20)
    assert summary(events) == [("b", "10.0.0.2:1"), ("c", "10.0.0.1:50051"), ("a", None)]
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    await eventually(lambda: not store.problems(), 10.0, "the problems to clear")
    assert await store.list() == await other.list()
    # and goes on watching without a restart
    revision, _ = await other.apply([svc("d")])
    [event] = await take(watch, 1)
    assert (event.revision, event.name) == (revision, "d")
    await store.close()
    await other.close()


@pytest.mark.timeout(60)
async def test_etcd_outage_keeps_the_last_state_and_catches_up(
    store: EtcdStore, etcd: EtcdServer
) -> None:
    await store.apply([svc("orders"), svc("billing")])
    before = await store.list()
    watch = store.watch(store.revision)
    etcd.stop()
    await eventually(lambda: bool(store.problems()), 10.0, "a problem to be reported")
    [problem] = store.problems()
    assert problem.source == store.url
    assert "unreachable" in problem.message
    assert await store.list() == before
    assert (await store.get("orders")).service == svc("orders")
    with pytest.raises(StoreUnavailableError, match=etcd.endpoint):
        await store.apply([svc("shipping")])
    with pytest.raises(StoreUnavailableError):
        await store.delete("orders")

    etcd.start()
    # another control server writes as soon as etcd is back, maybe before this one reconnects
    other = etcd_store(etcd.endpoint)
    await other.start()
    r1, _ = await other.apply([svc("shipping")])
    r2 = await other.delete("billing")
    events = await take(watch, 2, timeout=20)
    assert [(e.revision, e.name, e.deleted) for e in events] == [
        (r1, "shipping", False),
        (r2, "billing", True),
    ]
    await eventually(lambda: not store.problems(), 10.0, "the problems to clear")
    assert await store.list() == await other.list()
    revision, _ = await store.apply([svc("orders", "10.0.0.2:1")])  # writes work again
    assert revision > r2
    await other.close()


async def test_failover_to_the_next_member(etcd: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = etcd_store([dead, etcd.endpoint])
    await store.start()
    revision, _ = await store.apply([svc("orders")])
    assert (await store.get("orders")).revision == revision
    assert store.problems() == []
    await store.close()
    # the same through a URL
    url_store = open_store(f"etcd://{dead},{etcd.endpoint}/test")
    await url_store.start()
    assert [s.service.name for s in (await url_store.list())[1]] == ["orders"]
    await url_store.close()


@pytest.mark.timeout(60)
async def test_failover_while_running(etcd: EtcdServer, etcd_relay: EtcdRelay) -> None:
    store = etcd_store([etcd_relay.endpoint, etcd.endpoint])
    await store.start()
    await store.apply([svc("orders")])
    watch = store.watch(store.revision)
    etcd_relay.cut()  # the first member becomes unreachable
    revision, _ = await store.apply([svc("billing")])  # goes to the second member
    [event] = await take(watch, 1, timeout=20)
    assert (event.revision, event.name) == (revision, "billing")
    await eventually(lambda: not store.problems(), 10.0, "the problems to clear")
    await store.close()


async def test_start_gives_up_naming_the_endpoints() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    store = EtcdStore(dead, start_timeout=0.5, op_timeout=1)
    with pytest.raises(StoreUnavailableError) as info:
        await store.start()
    for endpoint in dead:
        assert endpoint in str(info.value)
    await store.close()


async def test_a_bad_value_under_the_prefix_is_a_problem(
    store: EtcdStore, etcd: EtcdServer
) -> None:
    await store.apply([svc("orders")])
    async with etcd.client() as client:
        await client.put(b"/test/services/orders", b"\xff not protobuf")
        await client.put(b"/test/services/other", svc("wrong-name").SerializeToString())
    await eventually(lambda: len(store.problems()) == 2, 10.0, "two problems")
    sources = sorted(p.source for p in store.problems())
    assert sources == [
        f"{store.url} key /test/services/orders",
        f"{store.url} key /test/services/other",
    ]
    # the last good version stays in force
    assert (await store.get("orders")).service == svc("orders")
    with pytest.raises(NotFoundError):
        await store.get("other")
    # writing a good version through the store repairs it
    await store.apply([svc("orders", "10.0.0.2:1")])
    assert len(store.problems()) == 1
