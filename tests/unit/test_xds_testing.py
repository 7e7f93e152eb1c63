"""The test tools shipped with the xDS package (``mesh_xds.testing``): the rule checkers catch
each broken rule and pass what a conforming server sends, and the ADS clients ACK, NACK,
record and stop at a server that breaks a rule, against an in-process gRPC server that plays
a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from mesh_xds.testing import (
    AdsClient,
    DeltaAdsClient,
    DeltaRules,
    ProtocolViolation,
    SotwRules,
    names_in,
)
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER

pytestmark = pytest.mark.timeout(10)


def packed(type_url: str, name: str) -> any_pb2.Any:
    message: Any = (
        listener_pb2.Listener(name=name) if type_url == LISTENER else cluster_pb2.Cluster(name=name)
    )
    found = any_pb2.Any()
    found.Pack(message)
    return found


def sotw(type_url: str, nonce: str, *names: str, version: str = "v1") -> Any:
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        version_info=version,
        resources=[packed(type_url, n) for n in names],
    )


def asked(type_url: str, *names: str) -> Any:
    return discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)


def delta(type_url: str, nonce: str, *names: str, removed: tuple[str, ...] = ()) -> Any:
    return discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url,
        nonce=nonce,
        system_version_info="s1",
        resources=[
            discovery_pb2.Resource(name=n, version=f"{n}-v", resource=packed(type_url, n))
            for n in names
        ],
        removed_resources=removed,
    )


# -- the rules -------------------------------------------------------------------------------


def test_sotw_rules_pass_a_conforming_stream() -> None:
    rules = SotwRules(increasing_nonces=True)
    rules.requested(asked(LISTENER))  # legacy wildcard
    rules.requested(asked(CLUSTER, "a", "b"))
    assert rules.check(sotw(LISTENER, "1", "a", "b", "c")) == ["a", "b", "c"]
    assert rules.check(sotw(CLUSTER, "2", "b")) == ["b"]
    assert rules.check(sotw(CLUSTER, "3")) == []  # full state: nothing of it exists now


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (sotw(CLUSTER, ""), "without a nonce"),
        (sotw(CLUSTER, "7", version=""), "without version_info"),
        (sotw(ENDPOINT, "7"), "never requested"),
        (sotw(CLUSTER, "7", "a", "a"), r"named twice in one response: \['a'\]"),
        (sotw(CLUSTER, "7", "z"), r"nobody subscribed to: \['z'\]"),
    ],
    ids=["no-nonce", "no-version", "type-not-asked", "duplicate", "not-subscribed"],
)
def test_sotw_rules_catch_each_broken_rule(response: Any, complaint: str) -> None:
    rules = SotwRules()
    rules.requested(asked(CLUSTER, "a", "b"))
    with pytest.raises(ProtocolViolation, match=complaint):
        rules.check(response)


def test_sotw_rules_catch_repeated_and_decreasing_nonces_and_foreign_resources() -> None:
    rules = SotwRules(increasing_nonces=True)
    rules.requested(asked(CLUSTER))
    rules.check(sotw(CLUSTER, "5"))
    with pytest.raises(ProtocolViolation, match="nonce '5' sent twice"):
        rules.check(sotw(CLUSTER, "5"))
    with pytest.raises(ProtocolViolation, match="must be increasing integers"):
        rules.check(sotw(CLUSTER, "4"))
    foreign = sotw(CLUSTER, "9")
    foreign.resources.append(packed(LISTENER, "a"))
    with pytest.raises(ProtocolViolation, match="Listener resource in a CDS response"):
        rules.check(foreign)


def test_sotw_rules_on_a_real_stream_accept_any_subscription_made() -> None:
    """A response in flight may answer the subscription before the latest."""
    rules = SotwRules()
    rules.requested(asked(CLUSTER, "a", "b"))
    rules.requested(asked(CLUSTER, "a"))
    assert rules.check(sotw(CLUSTER, "1", "a", "b")) == ["a", "b"]
    in_order = SotwRules(in_order=True)
    in_order.requested(asked(CLUSTER, "a", "b"))
    in_order.requested(asked(CLUSTER, "a"))
    with pytest.raises(ProtocolViolation, match=r"nobody subscribed to: \['b'\]"):
        in_order.check(sotw(CLUSTER, "1", "a", "b"))


def test_sotw_rules_in_order_know_full_state_and_empty_subscriptions() -> None:
    existing = {CLUSTER: {"a", "b", "c"}}
    rules = SotwRules(in_order=True, existing=lambda type_url: existing.get(type_url, set()))
    rules.requested(asked(CLUSTER, "a", "b", "missing"))
    assert rules.check(sotw(CLUSTER, "1", "a", "b")) == ["a", "b"]
    with pytest.raises(ProtocolViolation, match="not every subscribed resource"):
        rules.check(sotw(CLUSTER, "2", "a"))
    rules.requested(asked(CLUSTER, "*"))
    with pytest.raises(ProtocolViolation, match="not every subscribed resource"):
        rules.check(sotw(CLUSTER, "3", "a", "b"))
    rules.check(sotw(CLUSTER, "4", "a", "b", "c"))
    rules.requested(asked(ENDPOINT))  # no legacy wildcard: a subscription of nothing
    with pytest.raises(ProtocolViolation, match="subscription of nothing"):
        rules.check(discovery_pb2.DiscoveryResponse(type_url=ENDPOINT, nonce="5", version_info="v"))


def test_delta_rules_pass_a_conforming_stream_and_catch_each_broken_rule() -> None:
    rules = DeltaRules(increasing_nonces=True, system_version=True)
    rules.requested(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER))
    assert rules.check(delta(CLUSTER, "1", "a", "b", removed=("c",))) == ["a", "b"]
    broken: list[tuple[Any, str]] = [
        (delta(CLUSTER, "1", "a"), "sent twice"),
        (delta(CLUSTER, "2"), "an empty delta CDS response"),
        (delta(LISTENER, "3", "a"), "never requested"),
        (delta(CLUSTER, "4", "a", "a"), "named twice"),
        (delta(CLUSTER, "5", removed=("a", "a")), "removed twice"),
        (delta(CLUSTER, "6", "a", removed=("a",)), "both sent and removed"),
    ]
    unversioned = delta(CLUSTER, "7", "a")
    unversioned.resources[0].version = ""
    broken.append((unversioned, "without a version"))
    misnamed = delta(CLUSTER, "8", "a")
    misnamed.resources[0].name = "b"
    broken.append((misnamed, "named 'b' carries 'a'"))
    foreign = delta(CLUSTER, "9", "a")
    foreign.resources[0].resource.CopyFrom(packed(LISTENER, "a"))
    broken.append((foreign, "Listener resource in a delta CDS response"))
    no_version = delta(CLUSTER, "10", "a")
    no_version.system_version_info = ""
    broken.append((no_version, "without system_version_info"))
    for response, complaint in broken:
        with pytest.raises(ProtocolViolation, match=complaint):
            rules.check(response)


# -- the clients, against a scripted server -----------------------------------------------------

Script = Callable[[asyncio.Queue[Any], list[Any]], AsyncIterator[Any]]


class Scripted(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Records every request; answers with what ``script`` yields for each stream."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Any] = []

    async def _serve(self, request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                self.requests.append(request)
                await queue.put(request)

        reader = asyncio.create_task(read())
        try:
            async for response in self.script(queue, self.requests):
                yield response
        finally:
            reader.cancel()

    async def StreamAggregatedResources(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[Any]:
        async for response in self._serve(request_iterator):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[Any]:
        async for response in self._serve(request_iterator):
            yield response


async def serve(script: Script) -> tuple[grpc.aio.Server, Scripted, str]:
    servicer = Scripted(script)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, f"127.0.0.1:{port}"


async def test_the_sotw_client_acks_nacks_and_records() -> None:
    async def script(queue: asyncio.Queue[Any], _: list[Any]) -> AsyncIterator[Any]:
        await queue.get()
        yield sotw(CLUSTER, "1", "a", version="v1")
        await queue.get()  # the ACK
        yield sotw(CLUSTER, "2", "a", "b", version="v2")
        await queue.get()  # the NACK
        await asyncio.sleep(10)

    server, servicer, target = await serve(script)
    try:

        def reject(response: Any) -> str | None:
            return "no b" if len(response.resources) > 1 else None

        async with AdsClient(target, "n1", reject=reject) as client:
            client.subscribe(CLUSTER)
            await client.wait_for(lambda c: len(c.of_type(CLUSTER)) == 2)
            await asyncio.sleep(0.1)
            assert [names_in(r) for r in client.responses] == [["a"], ["a", "b"]]
            assert client.latest(CLUSTER).version_info == "v2"
            assert client.received[0].t <= client.received[1].t
        first, ack, nack = servicer.requests[:3]
        assert first.node.id == "n1" and first.type_url == CLUSTER and not first.response_nonce
        assert (ack.response_nonce, ack.version_info, ack.HasField("error_detail")) == (
            "1",
            "v1",
            False,
        )
        assert (nack.response_nonce, nack.version_info, nack.error_detail.message) == (
            "2",
            "v1",  # the last version accepted
            "no b",
        )
    finally:
        await server.stop(None)


async def test_the_sotw_client_stops_at_a_broken_rule_and_says_so() -> None:
    async def script(queue: asyncio.Queue[Any], _: list[Any]) -> AsyncIterator[Any]:
        await queue.get()
        yield sotw(CLUSTER, "1", "a")
        yield sotw(CLUSTER, "1", "a")  # the same nonce again
        await asyncio.sleep(10)

    server, _, target = await serve(script)
    try:
        client = AdsClient(target, "n1")
        with pytest.raises(ProtocolViolation, match="nonce '1' sent twice"):
            async with client:
                client.subscribe(CLUSTER)
                with pytest.raises(ProtocolViolation):
                    await client.wait_for(lambda c: len(c.of_type(CLUSTER)) == 2)
        assert len(client.of_type(CLUSTER)) == 1
    finally:
        await server.stop(None)


async def test_the_sotw_client_keeps_the_stream_error() -> None:
    async def script(queue: asyncio.Queue[Any], _: list[Any]) -> AsyncIterator[Any]:
        await queue.get()
        raise ValueError("boom")
        yield  # an async generator

    server, _, target = await serve(script)
    try:
        async with AdsClient(target, "n1") as client:
            client.subscribe(CLUSTER)
            with pytest.raises(grpc.aio.AioRpcError):
                await client.wait_for(lambda c: bool(c.of_type(CLUSTER)))
            assert client.error is not None and client.error.code() is grpc.StatusCode.UNKNOWN
    finally:
        await server.stop(None)


async def test_the_delta_client_acks_holds_and_takes_responses_in_order() -> None:
    async def script(queue: asyncio.Queue[Any], _: list[Any]) -> AsyncIterator[Any]:
        await queue.get()
        yield delta(CLUSTER, "1", "a", "b")
        await queue.get()  # the ACK
        yield delta(CLUSTER, "2", "c", removed=("a", "old"))
        await asyncio.sleep(10)

    server, servicer, target = await serve(script)
    try:
        async with DeltaAdsClient(target, "n1") as client:
            client.request(CLUSTER, ["*"], initial={"old": "x"})
            assert client.held[CLUSTER] == {"old": "x"}
            first, second = await client.next(), await client.next()
            assert [r.nonce for r in (first, second)] == ["1", "2"]
            await client.nothing(0.2)
            assert client.held[CLUSTER] == {"b": "b-v", "c": "c-v"}
            client.request(CLUSTER, unsubscribe=["b"])
            assert client.held[CLUSTER] == {"c": "c-v"}
            await asyncio.sleep(0.1)
        subscribe, ack = servicer.requests[:2]
        assert subscribe.node.id == "n1" and list(subscribe.resource_names_subscribe) == ["*"]
        assert ack.response_nonce == "1" and not ack.HasField("node")
    finally:
        await server.stop(None)
