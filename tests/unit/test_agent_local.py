"""What the agent serves locally follows each change in proportion to it: the snapshot is
derived from the last one (only the changed resources redone, the same versions as a whole
build), a health verdict redoes only its service's assignments, local streams get only what
changed among their names, and the upstream interest decodes only changed listeners."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2

from control.resources import build_resources
from mesh.v1 import config_pb2
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.health.table import NO_VERDICT, Verdict
from mesh_agent.daemon.local import (
    LocalSnapshot,
    LocalSnapshotSource,
    ZonePriorities,
    zone_priorities,
)
from mesh_agent.daemon.upstream.interest import References, compute_interest
from mesh_xds.testing import names_in
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.unit.xds_streams import FakeDeltaStream, FakeStream, service

pytestmark = pytest.mark.timeout(10)

NODE = base_pb2.Node(id="node-1")
NAMES = [f"s{i}" for i in range(20)]


def packed_resources(*services: tuple[str, str]) -> dict[str, list[any_pb2.Any]]:
    built = build_resources([service(name, address) for name, address in services], "")
    out: dict[str, list[any_pb2.Any]] = {}
    for type_url, by_name in built.items():
        for message in by_name.values():
            box = any_pb2.Any()
            box.Pack(message)
            out.setdefault(type_url, []).append(box)
    return out


def filled_cache() -> ConfigCache:
    cache = ConfigCache(None, "node-1")
    every = packed_resources(*((n, f"10.0.0.{i + 1}:80") for i, n in enumerate(NAMES)))
    for type_url, resources in every.items():
        assert cache.accept_delta(type_url, "v1", resources, []) is None
    return cache


def move(cache: ConfigCache, name: str, address: str) -> None:
    """Moves ``name`` to ``address``: a one-endpoint change, as upstream sends it."""
    assert (
        cache.accept_delta(ENDPOINT, "v2", packed_resources((name, address))[ENDPOINT], []) is None
    )


class Verdicts:
    def __init__(self) -> None:
        self.by_service: dict[str, Verdict] = {}

    def __call__(self, service: str) -> Verdict:
        return self.by_service.get(service, NO_VERDICT)


def source_of(cache: ConfigCache, verdicts: Verdicts | None = None) -> LocalSnapshotSource:
    source = LocalSnapshotSource(cache, verdicts or Verdicts())
    cache.changed.connect(source.cache_changed)
    return source


def test_a_change_is_applied_to_the_last_snapshot_with_a_whole_builds_versions() -> None:
    cache = filled_cache()
    source = source_of(cache)
    before = source.snapshot_for(NODE)
    selections = {t: before.selection(t, False, frozenset(NAMES)) for t in (LISTENER, ENDPOINT)}

    move(cache, "s3", "10.9.9.9:80")
    after = source.snapshot_for(NODE)
    assert isinstance(after, LocalSnapshot) and source.builds == 1
    assert after.changes == {ENDPOINT: frozenset({"s3"})}
    assert after.resources[LISTENER] is before.resources[LISTENER]
    assert after.resources[ENDPOINT]["s4"] is before.resources[ENDPOINT]["s4"]
    # Selections not touched by the change are the very same; the touched one differs.
    assert after.selection(LISTENER, False, frozenset(NAMES)) is selections[LISTENER]
    eds = after.selection(ENDPOINT, False, frozenset(NAMES))
    assert eds[1]["s3"] != selections[ENDPOINT][1]["s3"]
    assert eds[1]["s4"] == selections[ENDPOINT][1]["s4"]
    assert after.changed_since(before, ENDPOINT) == {"s3"}

    # A whole build of the same content has the same versions.
    whole = LocalSnapshotSource(cache).snapshot_for(NODE)
    assert whole.id == after.id != before.id
    for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
        mine = after.selection(type_url, False, frozenset(NAMES))
        theirs = whole.selection(type_url, False, frozenset(NAMES))
        assert mine[1] == theirs[1] and mine[2] == theirs[2]


def test_an_unchanged_resend_leaves_the_snapshot_as_it_is() -> None:
    cache = filled_cache()
    source = source_of(cache)
    before = source.snapshot_for(NODE)
    move(cache, "s3", "10.0.0.4:80")  # what it had already
    assert source.snapshot_for(NODE) is before


def test_a_health_verdict_redoes_only_its_services_assignments() -> None:
    cache = filled_cache()
    verdicts = Verdicts()
    source = source_of(cache, verdicts)
    before = source.snapshot_for(NODE)
    verdicts.by_service["s5"] = Verdict(unhealthy={"10.0.0.6:80": "failing"})
    source.verdict_changed("s5")
    after = source.snapshot_for(NODE)
    assert source.builds == 1 and after.changes == {ENDPOINT: frozenset({"s5"})}
    assignment = endpoint_pb2.ClusterLoadAssignment()
    after.resources[ENDPOINT]["s5"].packed.Unpack(assignment)
    status = assignment.endpoints[0].lb_endpoints[0].health_status
    assert status == health_check_pb2.UNHEALTHY
    assert after.resources[ENDPOINT]["s6"] is before.resources[ENDPOINT]["s6"]


@pytest.fixture
async def sotw() -> AsyncIterator[tuple[ConfigCache, FakeStream]]:
    cache = filled_cache()
    stream = FakeStream(source_of(cache))  # type: ignore[arg-type]
    stream.start()
    yield cache, stream
    await stream.close()


async def test_a_local_sotw_stream_gets_only_the_changed_assignment(
    sotw: tuple[ConfigCache, FakeStream],
) -> None:
    cache, stream = sotw
    await stream.request(ENDPOINT, NAMES)
    first = await stream.next()
    assert sorted(names_in(first)) == sorted(NAMES)
    await stream.ack(first, NAMES)
    await stream.nothing()

    move(cache, "s7", "10.9.9.9:80")
    pushed = await stream.next()
    assert names_in(pushed) == ["s7"] and pushed.version_info != first.version_info
    await stream.ack(pushed, NAMES)
    await stream.nothing()


async def test_a_local_delta_stream_gets_only_the_changed_assignment() -> None:
    cache = filled_cache()
    stream = FakeDeltaStream(source_of(cache))  # type: ignore[arg-type]
    stream.start()
    try:
        await stream.request(ENDPOINT, subscribe=NAMES)
        first = await stream.next()
        assert len(first.resources) == len(NAMES)
        await stream.ack(first)
        move(cache, "s7", "10.9.9.9:80")
        pushed = await stream.next()
        assert [r.name for r in pushed.resources] == ["s7"]
    finally:
        await stream.close()


def test_references_decode_only_what_changed_and_tell_when_a_reference_moved() -> None:
    cache = filled_cache()
    references = References.of(cache)
    assert references.routes() == set(NAMES)
    # Listeners sent again as they were: nothing refers elsewhere.
    again = packed_resources(("s1", "10.0.0.2:80"))[LISTENER]
    assert cache.accept_delta(LISTENER, "v2", again, []) is None
    assert not references.update(cache, cache.last_change)
    # A listener goes: its route is no longer referred to.
    assert cache.accept_delta(LISTENER, "v3", [], ["s1"]) is None
    assert references.update(cache, cache.last_change)
    assert "s1" not in references.routes()
    interest = compute_interest(cache, {}, references)
    assert interest[ROUTE] == compute_interest(cache, {})[ROUTE]


def test_zone_priorities_follow_the_changed_assignments() -> None:
    def zoned(*zones: str) -> config_pb2.Service:
        endpoints = [
            config_pb2.Endpoint(address=f"10.0.1.{i + 1}:80", zone=zone)
            for i, zone in enumerate(zones)
        ]
        return config_pb2.Service(name="z", endpoints=endpoints)

    def accept(version: str, *services: config_pb2.Service) -> None:
        boxes = []
        for message in build_resources(list(services), "eu-a")[ENDPOINT].values():
            box = any_pb2.Any()
            box.Pack(message)
            boxes.append(box)
        assert cache.accept_delta(ENDPOINT, version, boxes, []) is None

    cache = ConfigCache(None, "node-1")
    accept("v1", zoned("eu-a", "eu-b"), service("s0", "10.0.0.1:80"))
    source = source_of(cache)
    priorities = ZonePriorities()
    first = priorities.update(source.snapshot_for(NODE))
    assert first == zone_priorities(source.snapshot_for(NODE))
    assert {(zone, priority) for _, zone, priority in first} == {("eu-a", 0), ("eu-b", 1)}
    accept("v2", zoned("eu-a", "eu-a"))
    assert (
        priorities.update(source.snapshot_for(NODE))
        == []
        == zone_priorities(source.snapshot_for(NODE))
    )
