"""Endpoint registrations of nodes (control.registry): replace semantics, validation, the grace
timer after a node's last stream, and how the publisher merges them into the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from control.nodes import ConnectedNodes
from control.publisher import Publisher
from control.registry import (
    RegistrationError,
    Registrations,
    merge_registered,
    validate_registrations,
)
from control.resources import build_resources
from control.store import MemoryStore
from mesh.v1 import config_pb2, node_pb2
from mesh_xds.cache import SnapshotCache
from mesh_xds.sotw import SotwSession
from mesh_xds.types import ENDPOINT
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(10)

WAIT = 2.0  # seconds to wait for a state
POLL = 0.01


def reg(service: str, address: str, **kw: object) -> node_pb2.Registration:
    return node_pb2.Registration(service=service, address=address, **kw)  # type: ignore[arg-type]


def addresses(registrations: Registrations, node_id: str) -> list[str]:
    return [r.address for r in registrations.registrations(node_id)]


# -- replace semantics and validation ---------------------------------------------------------


async def test_set_replaces_the_nodes_whole_set() -> None:
    registrations = Registrations()
    registrations.connected("a")
    assert registrations.set("a", [reg("orders", "10.0.0.1:80"), reg("orders", "10.0.0.2:80")]) == 2
    assert registrations.set("b", [reg("users", "10.0.1.1:80")]) == 1
    assert registrations.set("a", [reg("billing", "10.0.0.3:80")]) == 1
    assert addresses(registrations, "a") == ["10.0.0.3:80"]
    assert addresses(registrations, "b") == ["10.0.1.1:80"], "another node's set is untouched"
    assert registrations.set("a", []) == 0
    assert registrations.registrations("a") == []
    assert registrations.nodes() == ["b"]
    registrations.close()


async def test_changes_notify_listeners_but_identical_sets_do_not() -> None:
    registrations = Registrations()
    changes: list[int] = []
    registrations.subscribe(lambda: changes.append(1))
    registrations.connected("a")
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    assert len(changes) == 1
    registrations.set("a", [reg("orders", "10.0.0.1:80", draining=True)])
    assert len(changes) == 2
    registrations.report_clients("a", [node_pb2.LocalClientStatus(client_id="p1")])
    assert len(changes) == 2, "client reports do not change the config"


@pytest.mark.parametrize(
    ("registration", "expected"),
    [
        (reg("Orders!", "10.0.0.1:80"), "registrations[1].service: must be a lowercase DNS name"),
        (reg("", "10.0.0.1:80"), "registrations[1].service: required"),
        (reg("orders", "db.local:80"), "registrations[1].address: host must be an IP address"),
        (reg("orders", "10.0.0.1"), "registrations[1].address: must be host:port"),
        (reg("orders", "10.0.0.1:0"), "registrations[1].address: port must be between"),
        (reg("orders", "::1:80"), "registrations[1].address: IPv6 hosts must be in brackets"),
        (reg("orders", "10.0.0.9:80", weight=10**7), "registrations[1].weight: must be at most"),
        (reg("orders", "10.0.0.1:80"), "registrations[1].address: '10.0.0.1:80' is registered"),
    ],
)
async def test_invalid_registrations_are_refused_and_nothing_changes(
    registration: node_pb2.Registration, expected: str
) -> None:
    registrations = Registrations()
    registrations.connected("a")
    registrations.set("a", [reg("kept", "10.9.9.9:1")])
    with pytest.raises(RegistrationError) as caught:
        registrations.set("a", [reg("orders", "10.0.0.1:80"), registration])
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    assert expected in str(caught.value)
    assert addresses(registrations, "a") == ["10.9.9.9:1"], "the good set stays in force"


async def test_ipv6_and_several_problems_at_once() -> None:
    assert validate_registrations("a", [reg("orders", "[::1]:80")]) == []
    problems = validate_registrations("", [reg("Bad", "x:1"), reg("ok", "10.0.0.1:99999")])
    assert problems[0] == "node_id: required"
    assert [p.split(":")[0] for p in problems[1:]] == [
        "registrations[0].service",
        "registrations[0].address",
        "registrations[1].address",
    ]


async def test_report_clients_replaces_and_needs_a_node() -> None:
    registrations = Registrations()
    registrations.connected("a")
    first = node_pb2.LocalClientStatus(client_id="p1", type_url="t", nack_message="bad")
    second = node_pb2.LocalClientStatus(client_id="p2", type_url="t")
    registrations.report_clients("a", [first, second])
    registrations.report_clients("a", [second])
    assert [c.client_id for c in registrations.local_clients("a")] == ["p2"]
    with pytest.raises(RegistrationError, match="node_id: required"):
        registrations.report_clients("", [first])


# -- liveness ---------------------------------------------------------------------------------


async def test_registrations_drop_after_grace_once_the_last_stream_ends() -> None:
    registrations = Registrations(grace=0.2)
    changes: list[int] = []
    registrations.subscribe(lambda: changes.append(1))
    registrations.connected("a")
    registrations.connected("a")
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    registrations.report_clients("a", [node_pb2.LocalClientStatus(client_id="p1")])
    registrations.disconnected("a")
    await asyncio.sleep(0.3)
    assert addresses(registrations, "a") == ["10.0.0.1:80"], "one stream is still up"
    registrations.disconnected("a")
    assert registrations.pending_drop("a")
    await asyncio.sleep(0.1)
    assert addresses(registrations, "a") == ["10.0.0.1:80"], "dropped before the grace"
    await eventually(
        lambda: not registrations.registrations("a"),
        WAIT,
        "a's registrations to go",
        every=POLL,
    )
    assert registrations.local_clients("a") == []
    assert registrations.nodes() == []
    assert len(changes) == 2


async def test_a_reconnect_within_grace_keeps_the_registrations() -> None:
    registrations = Registrations(grace=0.2)
    registrations.connected("a")
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    registrations.disconnected("a")
    await asyncio.sleep(0.1)
    registrations.connected("a")
    assert not registrations.pending_drop("a")
    await asyncio.sleep(0.3)
    assert addresses(registrations, "a") == ["10.0.0.1:80"]


async def test_liveness_watchers_hear_of_a_nodes_departure_return_and_end() -> None:
    registrations = Registrations(grace=0.1)
    heard: list[tuple[str, bool, bool]] = []
    registrations.liveness.connect(
        lambda n: heard.append((n, registrations.is_connected(n), registrations.pending_drop(n)))
    )
    registrations.connected("a")
    registrations.connected("a")  # a second stream changes nothing
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    registrations.disconnected("a")  # one stream left
    assert heard == [("a", True, False)]
    registrations.disconnected("a")
    registrations.connected("a")
    registrations.disconnected("a")
    await eventually(
        lambda: not registrations.registrations("a"),
        WAIT,
        "a's registrations to go",
        every=POLL,
    )
    assert heard == [
        ("a", True, False),  # connected
        ("a", False, True),  # its last stream ended: the grace runs
        ("a", True, False),  # back within it
        ("a", False, True),
        ("a", False, False),  # the grace ran out
    ]


async def test_registering_without_a_stream_gets_the_grace_to_connect() -> None:
    registrations = Registrations(grace=0.1)
    registrations.set("a", [reg("orders", "10.0.0.1:80")])
    assert registrations.pending_drop("a")
    await eventually(
        lambda: not registrations.registrations("a"),
        WAIT,
        "a's registrations to go",
        every=POLL,
    )

    registrations.set("b", [reg("orders", "10.0.0.2:80")])
    registrations.connected("b")
    await asyncio.sleep(0.2)
    assert addresses(registrations, "b") == ["10.0.0.2:80"]


async def test_sub_second_grace_from_the_cli() -> None:
    from control.cli import build_parser

    args = build_parser().parse_args(["serve", "--registration-grace", "250ms"])
    assert args.registration_grace == 0.25
    assert build_parser().parse_args(["serve"]).registration_grace == 30.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--registration-grace", "-1s"])


async def test_ads_sessions_tell_the_registrations_when_the_node_is_known() -> None:
    cache = SnapshotCache(build_resources)
    cache.set_services(1, [])
    registrations = Registrations(grace=0.1)
    nodes = ConnectedNodes(registrations)
    requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def iterate() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async def send(data: bytes) -> None:
        return None

    session = SotwSession(cache, send, callbacks=nodes)
    nodes.registry.add(session)
    task = asyncio.create_task(session.run(iterate()))
    await asyncio.sleep(0.05)
    assert not registrations.is_connected("n1"), "not known before its first request"
    request = discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=["orders"])
    request.node.id = "n1"
    await requests.put(request)
    await eventually(
        lambda: registrations.is_connected("n1"),
        WAIT,
        "n1 connected",
        every=POLL,
    )
    registrations.set("n1", [reg("orders", "10.0.0.1:80")])
    registrations.report_clients(
        "n1", [node_pb2.LocalClientStatus(client_id="p", nack_message="no")]
    )
    [status] = nodes.node_statuses()
    assert [r.address for r in status.registrations] == ["10.0.0.1:80"]
    assert [c.nack_message for c in status.local_clients] == ["no"]

    await requests.put(None)
    await asyncio.wait_for(task, 2)
    nodes.registry.remove(session)
    nodes.on_close(session)
    nodes.on_close(session)  # the end of a stream counts once
    assert registrations.pending_drop("n1")
    [status] = nodes.node_statuses()
    assert status.node_id == "n1" and not status.stream_id, "shown during the grace"
    await eventually(
        lambda: not registrations.registrations("n1"),
        WAIT,
        "n1's registrations to go",
        every=POLL,
    )
    assert nodes.node_statuses() == []


# -- merging into the published services ------------------------------------------------------


def ep(address: str, **kw: object) -> config_pb2.Endpoint:
    return config_pb2.Endpoint(address=address, **kw)  # type: ignore[arg-type]


def test_merge_rules() -> None:
    operator = config_pb2.Service(
        name="orders",
        endpoints=[ep("10.0.0.1:80", zone="op")],
        policy=config_pb2.Policy(lb="ring_hash"),
    )
    registered = {
        "orders": [
            ep("10.0.0.1:80", zone="node", node_id="a"),
            ep("10.0.0.2:80", zone="z", weight=3, node_id="a", draining=True),
            ep("10.0.0.2:80", node_id="b"),
        ],
        "fresh": [ep("10.0.1.1:80", node_id="b", metadata={"k": "v"})],
    }
    merged = {s.name: s for s in merge_registered([operator], registered)}
    orders = merged["orders"]
    assert orders.policy.lb == "ring_hash"
    assert [(e.address, e.zone, e.node_id) for e in orders.endpoints] == [
        ("10.0.0.1:80", "op", ""),
        ("10.0.0.2:80", "z", "a"),
    ], "the operator's entry wins, and the first node for an address"
    assert orders.endpoints[1].draining and orders.endpoints[1].weight == 3
    assert [e.address for e in operator.endpoints] == ["10.0.0.1:80"], "input not modified"
    fresh = merged["fresh"]
    assert not fresh.HasField("policy")
    assert [(e.address, e.node_id, dict(e.metadata)) for e in fresh.endpoints] == [
        ("10.0.1.1:80", "b", {"k": "v"})
    ]


def endpoints_served(cache: SnapshotCache, name: str) -> list[tuple[str, int]] | None:
    resource = cache.snapshot_for(base_pb2.Node(id="x")).resources[ENDPOINT].get(name)
    if resource is None:
        return None
    assignment = endpoint_pb2.ClusterLoadAssignment()
    resource.packed.Unpack(assignment)
    return sorted(
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    )


async def test_publisher_merges_registrations_through_the_debounce() -> None:
    store = MemoryStore()
    await store.apply([config_pb2.Service(name="orders", endpoints=[ep("10.0.0.1:80")])])
    cache = SnapshotCache(build_resources)
    registrations = Registrations(grace=0.2)
    publisher = Publisher(store, cache, debounce=0.05, max_delay=0.5, registrations=registrations)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: cache.loaded, WAIT, "the cache loaded", every=POLL)
        assert endpoints_served(cache, "orders") == [("10.0.0.1", 80)]
        pushes = publisher.pushes

        registrations.connected("a")
        registrations.set("a", [reg("orders", "10.0.0.2:80")])
        registrations.set("a", [reg("orders", "10.0.0.2:80"), reg("solo", "10.0.0.3:81")])
        await eventually(
            lambda: endpoints_served(cache, "solo") is not None,
            WAIT,
            "solo served",
            every=POLL,
        )
        assert publisher.pushes == pushes + 1, "a burst of registrations is one push"
        assert endpoints_served(cache, "orders") == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        assert endpoints_served(cache, "solo") == [("10.0.0.3", 81)]

        # Store changes still get through, and keep the registered endpoints.
        await store.apply([config_pb2.Service(name="orders", endpoints=[ep("10.0.0.4:80")])])
        await eventually(
            lambda: endpoints_served(cache, "orders") == [("10.0.0.2", 80), ("10.0.0.4", 80)],
            WAIT,
            "orders served from its two registrations",
            every=POLL,
        )

        registrations.disconnected("a")
        await eventually(
            lambda: endpoints_served(cache, "solo") is None,
            WAIT,
            "solo no longer served",
            every=POLL,
        )
        assert endpoints_served(cache, "orders") == [("10.0.0.4", 80)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        registrations.close()
        await store.close()
