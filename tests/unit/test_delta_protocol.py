"""The delta ADS rules, through a fake stream that checks the server's side of the protocol on
every response it carries (``tests.unit.xds_streams``: nonces unique and increasing, only
types asked for, resources of the response's type and named as they are, no name both sent
and removed, nothing sent or removed twice in one response)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from control.resources import build_resources
from mesh.v1 import config_pb2
from mesh_core.errors import PermissionDeniedError, ProtocolError
from mesh_core.names import client_listener_name
from mesh_xds.cache import SnapshotCache
from mesh_xds.callbacks import SessionCallbacks
from mesh_xds.delta import DeltaTypeState
from mesh_xds.metrics import CONTROL, XdsMetrics
from mesh_xds.registry import SessionRegistry
from mesh_xds.session import Session
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SERVICE_POLICY
from tests.unit.xds_streams import FakeDeltaStream, service

pytestmark = pytest.mark.timeout(10)


def names_of(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return sorted(r.name for r in response.resources)


def changed(name: str, n: int) -> config_pb2.Service:
    """Service ``name`` with its route, cluster and policy changed (by ``n``)."""
    svc = service(name, "10.0.0.1:1")
    svc.policy.timeout.seconds = n
    svc.policy.circuit_breaker.max_requests = 100 + n
    return svc


@pytest.fixture
async def stream(cache: SnapshotCache) -> AsyncIterator[FakeDeltaStream]:
    fake = FakeDeltaStream(cache)
    fake.start()
    yield fake
    await fake.close()


async def test_first_request_without_node_is_refused(cache: SnapshotCache) -> None:
    fake = FakeDeltaStream(cache)
    fake.start()
    await fake.request(LISTENER, with_node=False)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(fake.task, 2)  # type: ignore[arg-type]


async def test_authorize_refuses_the_node(cache: SnapshotCache) -> None:
    class Refusing(SessionCallbacks):
        def on_node(self, session: Session) -> None:
            raise PermissionDeniedError(f"not {session.node_id}")

    fake = FakeDeltaStream(cache, callbacks=Refusing())
    fake.start()
    await fake.request(LISTENER)
    with pytest.raises(PermissionDeniedError, match="not node-1"):
        await asyncio.wait_for(fake.task, 2)  # type: ignore[arg-type]


async def test_legacy_wildcard_lds_gets_every_listener(stream: FakeDeltaStream) -> None:
    await stream.request(LISTENER)
    response = await stream.next()
    # Each service's own Listener and the client library's alias of it.
    assert names_of(response) == ["a", "b", client_listener_name("a"), client_listener_name("b")]
    assert not response.removed_resources
    await stream.ack(response)
    await stream.nothing()
    state = stream.session.types[LISTENER]
    assert isinstance(state, DeltaTypeState)
    assert (
        state.wildcard and state.acked_version == state.sent_version == response.system_version_info
    )


async def test_explicit_wildcard_and_policy_has_no_legacy_wildcard(
    stream: FakeDeltaStream,
) -> None:
    await stream.request(SERVICE_POLICY)
    await stream.nothing()
    assert not stream.session.types[SERVICE_POLICY].wildcard
    await stream.request(SERVICE_POLICY, ["*"])
    assert names_of(await stream.next()) == ["a", "b"]


async def test_named_subscribe_and_unsubscribe(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    await stream.request(ROUTE, ["b"])
    response = await stream.next()
    assert names_of(response) == ["b"]
    await stream.request(ROUTE, ["a"], nonce=response.nonce)
    assert names_of(await stream.next()) == ["a"]  # only the new one
    await stream.request(ROUTE, unsubscribe=["b"])
    await stream.nothing()  # unsubscribed names are not reported removed
    state = stream.session.types[ROUTE]
    assert state.names == {"a"} and set(state.sent or {}) == {"a"}
    cache.set_services(2, [changed("a", 1), changed("b", 1)])
    response = await stream.next()
    assert names_of(response) == ["a"]  # b changed too, but is no longer subscribed


async def test_unsubscribing_wildcard_keeps_named_ones(stream: FakeDeltaStream) -> None:
    await stream.request(CLUSTER, ["*", "a"])
    assert names_of(await stream.next()) == ["a", "b"]
    await stream.request(CLUSTER, unsubscribe=["*"])
    await stream.nothing()
    state = stream.session.types[CLUSTER]
    assert not state.wildcard and set(state.sent or {}) == {"a"}


async def test_only_changed_resources_are_sent(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    await stream.request(CLUSTER)
    await stream.ack(await stream.next())
    await stream.request(ENDPOINT, ["a", "b"])
    await stream.ack(await stream.next())
    cache.set_services(2, [service("a", "10.0.0.1:1"), service("b", "10.0.0.2:1", "10.0.0.3:1")])
    response = await stream.next()
    assert response.type_url == ENDPOINT and names_of(response) == ["b"]
    assert not response.removed_resources
    await stream.nothing()  # clusters unchanged: nothing for CDS


async def test_deletion_is_sent_in_removed_resources(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    await stream.request(LISTENER)
    await stream.ack(await stream.next())
    await stream.request(ROUTE, ["a", "b"])
    await stream.ack(await stream.next())
    cache.set_services(2, [service("a", "10.0.0.1:1")])
    response = await stream.next()
    assert response.type_url == LISTENER  # PUSH_ORDER: listeners before routes
    removed = sorted(response.removed_resources)
    assert not response.resources and removed == ["b", client_listener_name("b")]
    response = await stream.next()
    assert response.type_url == ROUTE and list(response.removed_resources) == ["b"]
    assert stream.held[LISTENER].keys() == {"a", client_listener_name("a")}


async def test_push_order_is_make_before_break(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    for type_url in (ROUTE, LISTENER, ENDPOINT, CLUSTER):
        await stream.request(type_url, ["c"])
    await stream.nothing()
    cache.set_services(2, [service("c", "10.0.0.3:1")])
    order = [(await stream.next()).type_url for _ in range(4)]
    assert order == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


async def test_names_requested_before_they_exist(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    await stream.request(CLUSTER, ["c"])
    await stream.nothing()
    cache.set_services(2, [service("a", "10.0.0.1:1"), service("c", "10.0.0.3:1")])
    response = await stream.next()
    assert names_of(response) == ["c"] and not response.removed_resources


async def test_resubscribe_resends_unchanged(stream: FakeDeltaStream) -> None:
    await stream.request(CLUSTER, ["a"])
    response = await stream.next()
    await stream.request(CLUSTER, unsubscribe=["a"], nonce=response.nonce)
    await stream.nothing()
    await stream.request(CLUSTER, ["a"])
    again = await stream.next()
    assert names_of(again) == ["a"]
    assert again.resources[0].version == response.resources[0].version


async def test_initial_resource_versions_on_reconnect(
    cache: SnapshotCache, stream: FakeDeltaStream
) -> None:
    await stream.request(CLUSTER)
    await stream.ack(await stream.next())
    held = dict(stream.held[CLUSTER])
    # While the node is away: a changes, b is deleted, c is added.
    cache.set_services(2, [changed("a", 5), service("c", "10.0.0.3:1")])
    again = FakeDeltaStream(cache)
    again.start()
    try:
        await again.request(CLUSTER, initial=held | {"gone": "x"})
        response = await again.next()
        assert names_of(response) == ["a", "c"]
        assert sorted(response.removed_resources) == ["b", "gone"]
        await again.ack(response)
        await again.nothing()
        # Current versions, plus b it still claims: only b is named, as removed.
        third = FakeDeltaStream(cache)
        third.start()
        await third.request(CLUSTER, initial=held | dict(again.held[CLUSTER]))
        response = await third.next()
        assert not response.resources and sorted(response.removed_resources) == ["b"]
        await third.close()
    finally:
        await again.close()


async def test_reconnect_with_everything_current_gets_nothing(cache: SnapshotCache) -> None:
    first = FakeDeltaStream(cache)
    first.start()
    await first.request(CLUSTER, ["a", "b", "missing"])
    await first.ack(await first.next())
    await first.close()
    again = FakeDeltaStream(cache)
    again.start()
    await again.request(CLUSTER, ["a", "b", "missing"], initial=first.held[CLUSTER])
    await again.nothing()
    state = again.session.types[CLUSTER]
    assert set(state.sent or {}) == {"a", "b"}
    # Status and CSDS see the node as holding the current version, not as waiting for one.
    current = cache.snapshot_for(again.node).id
    assert state.sent_version == state.acked_version == current
    assert state.last_nack is None
    await again.close()


async def test_subscribed_name_the_client_holds_but_gone_is_removed(
    cache: SnapshotCache,
) -> None:
    fake = FakeDeltaStream(cache)
    fake.start()
    await fake.request(ROUTE, ["a", "zzz"], initial={"zzz": "old"})
    response = await fake.next()
    assert names_of(response) == ["a"] and list(response.removed_resources) == ["zzz"]
    await fake.close()


async def test_nack_is_recorded_and_not_resent(
    stream: FakeDeltaStream, cache: SnapshotCache
) -> None:
    await stream.request(CLUSTER, ["a"])
    response = await stream.next()
    await stream.request(CLUSTER, nonce=response.nonce, error="bad cluster a")
    await stream.nothing(0.3)
    state = stream.session.types[CLUSTER]
    assert state.last_nack is not None and state.last_nack.message == "bad cluster a"
    assert state.last_nack.version == response.system_version_info
    assert state.acked_version == ""
    # A change elsewhere leaves cluster a as it was rejected: it is not resent.
    cache.set_services(2, [service("a", "10.0.0.1:1"), service("b", "10.0.0.9:1")])
    await stream.nothing(0.3)
    cache.set_services(3, [service("a", "10.0.0.7:1")])  # endpoints only
    await stream.nothing(0.3)
    # A change to cluster a itself is sent.
    cache.set_services(4, [changed("a", 3)])
    fixed = await stream.next()
    assert names_of(fixed) == ["a"]
    await stream.ack(fixed)
    await stream.nothing()
    assert state.acked_version == fixed.system_version_info
    assert len(stream.all) == 2


async def test_stale_nonce_is_ignored(stream: FakeDeltaStream, cache: SnapshotCache) -> None:
    await stream.request(CLUSTER, ["a"])
    first = await stream.next()
    cache.set_services(2, [changed("a", 7), service("b", "10.0.0.2:1")])
    second = await stream.next()
    assert names_of(second) == ["a"]
    await stream.request(CLUSTER, nonce=first.nonce, error="late NACK of the old response")
    await stream.nothing()
    state = stream.session.types[CLUSTER]
    assert state.last_nack is None and state.acked_version == ""
    # A stale request still changes the subscription.
    await stream.request(CLUSTER, ["b"], nonce=first.nonce)
    assert names_of(await stream.next()) == ["b"]
    await stream.ack(second)
    await stream.nothing()
    assert state.acked_version == ""  # `second` is no longer the latest response


async def test_unknown_type_is_ignored(stream: FakeDeltaStream) -> None:
    await stream.request("type.googleapis.com/not.a.Type", ["x"])
    await stream.nothing()


async def test_nothing_before_config_is_loaded() -> None:
    cache = SnapshotCache(build_resources)
    fake = FakeDeltaStream(cache)
    fake.start()
    await fake.request(CLUSTER)
    await fake.nothing()
    cache.set_services(1, [service("a", "10.0.0.1:1")])
    assert names_of(await fake.next()) == ["a"]
    await fake.close()


async def test_resources_are_shared_between_streams(cache: SnapshotCache) -> None:
    one, two = FakeDeltaStream(cache, "n1"), FakeDeltaStream(cache, "n2")
    one.start()
    two.start()
    await one.request(CLUSTER)
    await two.request(CLUSTER)
    await one.next()
    await two.next()
    snapshot = cache.snapshot_for(one.node)
    resource = snapshot.resources[CLUSTER]["a"]
    assert resource.delta is resource.delta
    assert resource.delta.version == resource.digest
    await one.close()
    await two.close()


async def test_metrics_and_status_see_delta_streams(cache: SnapshotCache) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics = XdsMetrics(CONTROL, MeterProvider(metric_readers=[reader]).get_meter("t"))
    registry = SessionRegistry()
    fake = FakeDeltaStream(cache, callbacks=metrics)
    registry.add(fake.session)
    fake.start()
    await fake.request(CLUSTER)
    response = await fake.next()
    await fake.ack(response)
    await fake.request(LISTENER, ["a"])
    await fake.request(LISTENER, nonce=(await fake.next()).nonce, error="no")
    await fake.nothing()
    data = reader.get_metrics_data()
    assert data is not None
    totals: dict[str, int] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                totals[metric.name] = sum(p.value for p in metric.data.data_points)  # type: ignore[union-attr]
    assert totals["mesh.xds.pushes"] == 2
    assert totals["mesh.xds.acks"] == 1
    assert totals["mesh.xds.nacks"] == 1
    (status,) = registry.node_statuses()
    assert status.stream_id.endswith("-delta")
    types = {t.type_url: t for t in status.types}
    assert (
        types[CLUSTER].version_acked == types[CLUSTER].version_sent == response.system_version_info
    )
    assert types[CLUSTER].wildcard
    assert types[LISTENER].last_nack.message == "no"
    (config,) = registry.client_configs()
    assert {(c.type_url, c.name) for c in config.generic_xds_configs} == {
        (CLUSTER, "a"),
        (CLUSTER, "b"),
        (LISTENER, "a"),
    }
    await fake.close()


async def test_delta_requests_are_held_to_the_limits() -> None:
    from mesh_core.errors import LimitExceeded
    from mesh_core.limits import Limits
    from mesh_xds.guard import AdsStreamGuard

    async def requests(
        *items: discovery_pb2.DeltaDiscoveryRequest,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        for item in items:
            yield item

    limits = Limits(max_names_per_request=2, max_name_length=100)
    fine = discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, resource_names_subscribe=["a"])
    fine.node.id = "n1"
    for bad in (
        discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, resource_names_subscribe="abc"),
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=CLUSTER, resource_names_unsubscribe=["x" * 101]
        ),
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=CLUSTER, initial_resource_versions={"a": "1", "b": "1", "c": "1"}
        ),
    ):
        guard = AdsStreamGuard(limits)
        seen = []
        with pytest.raises(LimitExceeded):
            async for request in guard.delta_requests(requests(fine, bad)):
                seen.append(request)
        assert seen == [fine] and guard.node_id == "n1"
