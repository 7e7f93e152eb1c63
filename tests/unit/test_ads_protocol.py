"""The state-of-the-world ADS rules, through a fake stream that itself checks the rules on
every response it carries (``tests.unit.xds_streams``: nonces unique and increasing, versions
set, only types asked for, no duplicate names, resources of the response's type and
subscribed to, full state for LDS, CDS and the policy type)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from mesh.v1 import config_pb2
from mesh_core.errors import ProtocolError
from mesh_core.names import client_listener_name
from mesh_xds.cache import SnapshotCache
from mesh_xds.testing import names_in, unpack
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SERVICE_POLICY
from tests.unit.xds_streams import FakeStream, service

pytestmark = pytest.mark.timeout(10)


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    return sorted(names_in(response))


@pytest.fixture
async def stream(cache: SnapshotCache) -> AsyncIterator[FakeStream]:
    fake = FakeStream(cache)
    fake.start()
    yield fake
    await fake.close()


async def test_wildcard_lds_gets_every_listener(stream: FakeStream) -> None:
    await stream.request(LISTENER)
    response = await stream.next()
    # Each service's own Listener and the client library's alias of it.
    assert names_of(response) == ["a", "b", client_listener_name("a"), client_listener_name("b")]
    await stream.ack(response, [])
    await stream.nothing()


async def test_explicit_wildcard_name(stream: FakeStream) -> None:
    await stream.request(CLUSTER, ["*"])
    assert names_of(await stream.next()) == ["a", "b"]


async def test_named_subscription_gets_only_those(stream: FakeStream) -> None:
    await stream.request(ROUTE, ["b"])
    response = await stream.next()
    assert names_of(response) == ["b"]


async def test_ack_is_recorded(stream: FakeStream) -> None:
    await stream.request(LISTENER, ["a"])
    response = await stream.next()
    await stream.ack(response, ["a"])
    await stream.nothing()
    state = stream.session.types[LISTENER]
    assert state.acked_version == response.version_info == state.sent_version


async def test_nack_is_recorded_and_not_resent(stream: FakeStream, cache: SnapshotCache) -> None:
    await stream.request(LISTENER, ["a"])
    response = await stream.next()
    await stream.request(LISTENER, ["a"], nonce=response.nonce, error="bad listener a")
    await stream.nothing(0.3)
    state = stream.session.types[LISTENER]
    assert state.last_nack is not None
    assert state.last_nack.message == "bad listener a"
    assert state.last_nack.version == response.version_info
    assert state.acked_version == ""
    # An unrelated change (service b) leaves what the client asked for unchanged: no resend.
    cache.set_services(2, [service("a", "10.0.0.1:1"), service("b", "10.0.0.9:1")])
    await stream.nothing(0.3)
    # A change to what it asked for is sent.
    cache.set_services(3, [service("a", "10.0.0.1:1")])
    await stream.nothing(0.1)  # listener a unchanged by an endpoint change
    a = service("a", "10.0.0.1:1")
    a.policy.timeout.seconds = 3
    cache.set_services(4, [a])
    await stream.request(ROUTE, ["a"])
    assert (await stream.next()).type_url == ROUTE
    assert len([r for r in stream.all if r.type_url == LISTENER]) == 1


async def test_stale_nonce_is_ignored(stream: FakeStream, cache: SnapshotCache) -> None:
    await stream.request(CLUSTER, ["a"])
    first = await stream.next()
    await stream.ack(first, ["a"])
    cache.set_services(2, [service("a", "10.0.0.1:1", "10.0.0.3:1"), service("b")])
    a = config_pb2.Service(name="a")
    a.policy.lb = "ring_hash"
    cache.set_services(3, [a, service("b")])
    second = await stream.next()
    # A NACK carrying the first nonce is stale: ignored, not recorded.
    await stream.request(CLUSTER, ["a"], nonce=first.nonce, error="late complaint")
    await stream.nothing()
    assert stream.session.types[CLUSTER].last_nack is None
    await stream.ack(second, ["a"])
    await stream.nothing()
    assert stream.session.types[CLUSTER].acked_version == second.version_info


async def test_name_requested_before_it_exists_is_pushed_when_it_appears(
    stream: FakeStream, cache: SnapshotCache
) -> None:
    await stream.request(ENDPOINT, ["later"])
    await stream.nothing()  # EDS is not full state: nothing to say about a missing name
    cache.set_services(2, [service("a"), service("b"), service("later", "10.0.0.7:1")])
    response = await stream.next()
    assert response.type_url == ENDPOINT
    assert [unpack(r).cluster_name for r in response.resources] == ["later"]


async def test_full_state_lds_reports_absence(stream: FakeStream, cache: SnapshotCache) -> None:
    await stream.request(LISTENER, ["missing"])
    response = await stream.next()  # an empty LDS response tells the client it does not exist
    assert names_of(response) == []
    await stream.ack(response, ["missing"])
    cache.set_services(2, [service("a"), service("b"), service("missing")])
    assert names_of(await stream.next()) == ["missing"]


async def test_deleted_service_leaves_lds_and_cds_but_eds_is_not_resent(
    stream: FakeStream, cache: SnapshotCache
) -> None:
    for type_url in (LISTENER, CLUSTER, ENDPOINT):
        await stream.request(type_url, ["a", "b"] if type_url == ENDPOINT else [])
        await stream.ack(await stream.next(), ["a", "b"] if type_url == ENDPOINT else [])
    cache.set_services(2, [service("a", "10.0.0.1:1")])
    first, second = await stream.next(), await stream.next()
    assert [first.type_url, second.type_url] == [CLUSTER, LISTENER]  # make before break order
    assert names_of(first) == ["a"]
    assert names_of(second) == ["a", client_listener_name("a")]
    await stream.nothing()


async def test_duplicate_names_in_request_give_one_resource(stream: FakeStream) -> None:
    await stream.request(ROUTE, ["a", "a", "b"])
    assert names_of(await stream.next()) == ["a", "b"]


async def test_reconnect_with_held_version_gets_no_resend(cache: SnapshotCache) -> None:
    first = FakeStream(cache)
    first.start()
    await first.request(CLUSTER)
    held = await first.next()
    await first.close()
    second = FakeStream(cache)
    second.start()
    await second.request(CLUSTER, version=held.version_info)
    await second.nothing()
    assert second.session.types[CLUSTER].acked_version == held.version_info
    await second.close()


async def test_unsubscribe_all_then_resubscribe(stream: FakeStream) -> None:
    await stream.request(ROUTE, ["a"])
    response = await stream.next()
    await stream.ack(response, [])
    await stream.nothing()
    await stream.request(ROUTE, ["a"], version=response.version_info, nonce=response.nonce)
    assert names_of(await stream.next()) == ["a"]


async def test_legacy_wildcard_ends_once_names_are_sent(stream: FakeStream) -> None:
    await stream.request(CLUSTER)
    first = await stream.next()
    await stream.ack(first, ["b"])
    assert names_of(await stream.next()) == ["b"]
    assert not stream.session.types[CLUSTER].wildcard


async def test_first_request_without_node_is_a_protocol_error(cache: SnapshotCache) -> None:
    fake = FakeStream(cache)
    fake.start()
    await fake.request(LISTENER, with_node=False)
    with pytest.raises(ProtocolError, match=r"node\.id"):
        assert fake.task is not None
        await asyncio.wait_for(fake.task, 2)


async def test_unknown_type_is_ignored(stream: FakeStream) -> None:
    await stream.request("type.googleapis.com/not.a.Type", ["x"])
    await stream.nothing()
    await stream.request(LISTENER, ["a"])
    assert names_of(await stream.next()) == ["a"]


async def test_policy_type_served_on_the_same_stream(stream: FakeStream) -> None:
    # Our own type has no legacy wildcard: an empty first request asks for nothing (it lets an
    # agent announce its node), "*" asks for everything.
    await stream.request(SERVICE_POLICY)
    await stream.nothing()
    assert stream.session.node_id == "node-1"
    await stream.request(SERVICE_POLICY, ["*"])
    assert names_of(await stream.next()) == ["a", "b"]


async def test_nodes_with_the_same_config_share_one_built_snapshot(cache: SnapshotCache) -> None:
    one, two = FakeStream(cache, "node-1"), FakeStream(cache, "node-2")
    one.start()
    two.start()
    await one.request(CLUSTER)
    await two.request(CLUSTER)
    await one.next()
    await two.next()
    assert one.session.snapshot is two.session.snapshot
    assert cache.builds == 1
    cache.set_services(2, [service("a")])
    await one.next()
    await two.next()
    assert one.session.snapshot is two.session.snapshot
    assert cache.builds == 2
    await one.close()
    await two.close()


async def test_an_eds_push_carries_only_the_changed_assignment(
    stream: FakeStream, cache: SnapshotCache
) -> None:
    await stream.request(ENDPOINT, ["a", "b"])
    first = await stream.next()
    assert names_of(first) == ["a", "b"]
    await stream.ack(first, ["a", "b"])
    cache.set_services(2, [service("a", "10.0.0.1:1"), service("b", "10.0.0.9:1")])
    pushed = await stream.next()
    # The client keeps a: for EDS (and RDS) absence is not deletion.
    assert names_of(pushed) == ["b"] and pushed.version_info != first.version_info
    await stream.ack(pushed, ["a", "b"])
    await stream.nothing()


async def test_an_assignment_subscribed_again_is_sent_again_unchanged(
    stream: FakeStream,
) -> None:
    await stream.request(ENDPOINT, ["a", "b"])
    first = await stream.next()
    await stream.ack(first, ["a", "b"])
    await stream.request(ENDPOINT, ["a"], version=first.version_info, nonce=first.nonce)
    await stream.nothing()
    await stream.request(ENDPOINT, ["a", "b"], version=first.version_info, nonce=first.nonce)
    again = await stream.next()
    assert names_of(again) == ["b"]
