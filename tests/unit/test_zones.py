"""Zone-aware routing piece by piece: the priorities the control server gives each zone's
nodes (built once per zone), the agent's verdict per zone (spill-over, failover, panic) and
the assignment it serves from it."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from control.config import load_documents
from control.resources import build_resources, zone_key
from mesh.v1 import config_pb2, node_pb2
from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.cli import build_parser, settings_from
from mesh_agent.daemon.health.component import health_targets
from mesh_agent.daemon.health.table import HealthPolicy, HealthTable, Verdict
from mesh_agent.daemon.local import LocalSnapshotSource, apply_verdict, zone_priorities
from mesh_agent.daemon.reporter import Reporter
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_service
from mesh_xds.cache import SnapshotCache
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, SERVICE_POLICY
from tests.unit.agent_caches import agent_cache

pytestmark = pytest.mark.timeout(30)

ORDERS = """
name: orders
endpoints:
  - {address: 10.0.0.1:50051, zone: a, labels: {version: v1}}
  - {address: 10.0.0.2:50051, zone: a, labels: {version: v1}, weight: 3}
  - {address: 10.0.0.3:50051, zone: b, labels: {version: v2}}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
policy:
  health_check: {interval: 1s}
"""
A1, A2, B1 = "10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"


def orders(text: str = ORDERS) -> config_pb2.Service:
    (service,) = load_documents(text, "orders.yaml")
    assert isinstance(service, config_pb2.Service)
    return service


def priorities(assignment: endpoint_pb2.ClusterLoadAssignment) -> dict[str, int]:
    return {loc.locality.zone: loc.priority for loc in assignment.endpoints}


def assignment_of(resources: dict[str, dict[str, object]], name: str) -> object:
    return resources[ENDPOINT][name]


# -- the control server: priorities per zone ----------------------------------------------


def test_a_node_gets_its_own_zone_at_priority_0_and_the_others_at_1() -> None:
    built = build_resources([orders()], "a")
    assert priorities(built[ENDPOINT]["orders"]) == {"a": 0, "b": 1}  # type: ignore[arg-type]
    assert priorities(build_resources([orders()], "b")[ENDPOINT]["orders"]) == {  # type: ignore[arg-type]
        "a": 1,
        "b": 0,
    }


def test_locality_weights_are_the_total_of_their_endpoints_weights() -> None:
    built = build_resources([orders()], "a")[ENDPOINT]["orders"]
    assert isinstance(built, endpoint_pb2.ClusterLoadAssignment)
    weights = {loc.locality.zone: loc.load_balancing_weight.value for loc in built.endpoints}
    assert weights == {"a": 4, "b": 1}


def test_priorities_have_no_gaps_when_an_assignment_lacks_the_own_zone() -> None:
    built = build_resources([orders()], "a")
    # Subset v2 has endpoints only in zone b: for a node of zone a that is priority 0.
    assert priorities(built[ENDPOINT]["orders/v2"]) == {"b": 0}  # type: ignore[arg-type]
    assert priorities(built[ENDPOINT]["orders/v1"]) == {"a": 0}  # type: ignore[arg-type]


def test_a_node_of_a_zone_without_endpoints_gets_every_zone_at_0() -> None:
    assert zone_key(orders(), "c") == ""
    assert priorities(build_resources([orders()], "c")[ENDPOINT]["orders"]) == {  # type: ignore[arg-type]
        "a": 0,
        "b": 0,
    }


def test_prefer_own_zone_false_serves_every_zone_at_0() -> None:
    service = orders(ORDERS + "  locality: {prefer_own_zone: false}\n")
    assert zone_key(service, "a") == ""
    assert priorities(build_resources([service], "a")[ENDPOINT]["orders"]) == {  # type: ignore[arg-type]
        "a": 0,
        "b": 0,
    }


def test_a_service_in_one_zone_is_the_same_for_every_node() -> None:
    single = orders(ORDERS.replace("zone: b", "zone: a"))
    assert zone_key(single, "a") == ""
    assert zone_key(orders(), "a") == "a"
    assert zone_key(orders(), "") == ""


def test_the_cache_builds_a_service_once_per_zone_it_differs_in_and_shares_the_rest() -> None:
    calls: list[tuple[str, str]] = []

    def builder(services, zone):  # type: ignore[no-untyped-def]
        services = list(services)
        calls.extend((s.name, zone) for s in services)
        return build_resources(services, zone)

    plain = orders(
        "name: billing\nendpoints: [{address: 10.0.0.9:50051, zone: a}, "
        "{address: 10.0.0.8:50051, zone: b}]\npolicy: {locality: {prefer_own_zone: false}}\n"
    )
    cache = SnapshotCache(builder, zone_key)
    cache.set_services(1, [orders(), plain])
    node = lambda id_, zone: base_pb2.Node(id=id_, locality=base_pb2.Locality(zone=zone))  # noqa: E731
    a1, a2, b = (cache.snapshot_for(node(*n)) for n in (("n1", "a"), ("n2", "a"), ("n3", "b")))
    assert a1 is a2  # one snapshot per zone, shared by its nodes
    assert a1 is not b
    assert sorted(calls) == [("billing", ""), ("orders", "a"), ("orders", "b")]
    # What does not differ by zone is the same object in both snapshots.
    assert a1.resources[ENDPOINT]["billing"] is b.resources[ENDPOINT]["billing"]
    assert a1.resources[LISTENER]["orders"].digest == b.resources[LISTENER]["orders"].digest
    assert a1.resources[ENDPOINT]["orders"].digest != b.resources[ENDPOINT]["orders"].digest
    none = cache.snapshot_for(node("n4", ""))
    assert none is not a1
    assert cache.snapshot_for(node("n5", "c")) is none  # a zone with no endpoints: all at 0


def test_validate_checks_spill_over_below() -> None:
    with pytest.raises(ConfigError) as raised:
        orders(ORDERS + "  locality: {spill_over_below: 1.5}\n")
    assert "policy.locality.spill_over_below: must be between 0 and 1, got 1.5" in str(raised.value)
    assert validate_service(orders(ORDERS + "  locality: {spill_over_below: 0}\n")) == []


# -- the agent: verdicts per zone ----------------------------------------------------------

PLACED = {A1: ("a", 0), A2: ("a", 0), B1: ("b", 1)}


def table_with(
    placement: dict[str, tuple[str, int]] = PLACED, spill: float = 0.7, panic: float = 0.5
) -> HealthTable:
    table = HealthTable(panic_threshold=panic)
    policy = HealthPolicy(unhealthy_threshold=1, healthy_threshold=1)
    table.update_targets("orders", list(placement), policy, placement, spill)
    return table


def fail(table: HealthTable, *addresses: str) -> None:
    for address in addresses:
        table.record("orders", address, ok=False)


def test_a_failed_zone_fails_over_instead_of_tripping_a_service_wide_panic() -> None:
    table = table_with()
    fail(table, A1, A2)  # 1 of 3 usable: below the 50% panic threshold service-wide
    verdict = table.verdict("orders")
    assert not verdict.panic
    assert verdict.unhealthy == {A1: "unhealthy", A2: "unhealthy"}
    assert verdict.first_zones == {"a", "b"}


def test_the_next_zone_joins_when_the_own_zone_is_below_spill_over() -> None:
    table = table_with()
    fail(table, A1)  # 1 of 2 usable in zone a: 50% < 70%
    assert table.verdict("orders") == Verdict({A1: "unhealthy"}, frozenset({"a", "b"}))


def test_no_spill_over_while_enough_of_the_own_zone_is_usable() -> None:
    placement = {f"10.0.0.{i}:1": ("a", 0) for i in range(4)} | {B1: ("b", 1)}
    table = table_with(placement)
    fail(table, "10.0.0.0:1")  # 3 of 4 usable: 75%
    assert table.verdict("orders") == Verdict({"10.0.0.0:1": "unhealthy"})


def test_spill_over_below_0_fails_over_only_when_no_endpoint_is_usable() -> None:
    table = table_with(spill=0.0)
    fail(table, A1)
    assert table.verdict("orders").first_zones == frozenset()
    fail(table, A2)
    assert table.verdict("orders").first_zones == {"a", "b"}


def test_panic_only_when_every_zone_is_below_the_threshold() -> None:
    table = table_with()
    fail(table, A1, A2, B1)
    assert table.verdict("orders") == Verdict(panic=True)
    assert table.in_panic("orders")
    assert table.overrides("orders") == {}


def test_a_service_in_one_zone_panics_as_before() -> None:
    table = table_with({A1: ("", 0), A2: ("", 0), B1: ("", 0)})
    fail(table, A1)
    assert table.verdict("orders") == Verdict({A1: "unhealthy"})
    fail(table, A2)  # 1 of 3 usable
    assert table.in_panic("orders")


def test_apply_verdict_renumbers_priorities_and_weights_localities_by_usable_endpoints() -> None:
    built = build_resources([orders()], "a")[ENDPOINT]["orders"]
    assert isinstance(built, endpoint_pb2.ClusterLoadAssignment)
    served = apply_verdict(built, Verdict({A2: "unhealthy"}, frozenset({"a", "b"})))
    assert priorities(served) == {"a": 0, "b": 0}
    weights = {loc.locality.zone: loc.load_balancing_weight.value for loc in served.endpoints}
    assert weights == {"a": 1, "b": 1}  # zone a keeps only A1 (weight 1) of its 4
    health = {
        lb.endpoint.address.socket_address.address: lb.health_status
        for loc in served.endpoints
        for lb in loc.lb_endpoints
    }
    assert health["10.0.0.2"] == health_check_pb2.UNHEALTHY
    assert health["10.0.0.1"] != health_check_pb2.UNHEALTHY


def test_apply_verdict_keeps_later_priorities_in_order_without_gaps() -> None:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name="x")
    for zone, priority in (("a", 0), ("b", 1), ("c", 2)):
        loc = assignment.endpoints.add(priority=priority)
        loc.locality.zone = zone
        loc.load_balancing_weight.value = 1
    apply_verdict(assignment, Verdict(first_zones=frozenset({"a", "b"})))
    assert priorities(assignment) == {"a": 0, "b": 0, "c": 1}


def _agent_cache(service: config_pb2.Service, zone: str) -> ConfigCache:
    resources = build_resources([service], zone)
    return agent_cache(resources, {t: resources[t] for t in (CLUSTER, ENDPOINT, SERVICE_POLICY)})


def test_the_agent_places_each_endpoint_by_its_zone_and_serves_the_spill_over() -> None:
    cache = _agent_cache(orders(), "a")
    target = health_targets(cache)["orders"]
    assert target.placement == PLACED
    assert target.spill_over_below == 0.7
    table = HealthTable()
    table.update_targets(
        "orders",
        target.addresses,
        HealthPolicy(unhealthy_threshold=1),
        target.placement,
        target.spill_over_below,
    )
    source = LocalSnapshotSource(cache, table.verdict)
    node = base_pb2.Node(id="app")
    assert zone_priorities(source.snapshot_for(node)) == [("orders", "a", 0), ("orders", "b", 1)]
    fail(table, A1, A2)
    source.invalidate()
    snapshot = source.snapshot_for(node)
    assert zone_priorities(snapshot) == [("orders", "a", 0), ("orders", "b", 0)]
    v1 = endpoint_pb2.ClusterLoadAssignment()
    assert snapshot.resources[ENDPOINT]["orders/v1"].packed.Unpack(v1)
    assert all(
        lb.health_status == health_check_pb2.UNHEALTHY for lb in v1.endpoints[0].lb_endpoints
    )


def test_the_agent_reads_spill_over_below_from_the_policy() -> None:
    cache = _agent_cache(orders(ORDERS + "  locality: {spill_over_below: 0.25}\n"), "a")
    assert health_targets(cache)["orders"].spill_over_below == 0.25


# -- the agent's command line and registrations ---------------------------------------------


def _settings(*argv: str, config: dict[str, object] | None = None) -> object:
    args = build_parser().parse_args(["run", "--control", "127.0.0.1:1", *argv])
    return settings_from(args, config or {})


def test_panic_threshold_comes_from_the_flag_or_the_config_file() -> None:
    assert _settings("--panic-threshold", "0.3").panic_threshold == 0.3  # type: ignore[attr-defined]
    assert _settings(config={"panic_threshold": 0.2}).panic_threshold == 0.2  # type: ignore[attr-defined]
    assert _settings().panic_threshold == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "config", "message"),
    [
        (("--panic-threshold", "1.5"), {}, "--panic-threshold must be between 0 and 1, got 1.5"),
        ((), {"panic_threshold": "lots"}, "panic_threshold must be a number between 0 and 1"),
    ],
)
def test_a_bad_panic_threshold_is_refused_naming_where_it_came_from(
    argv: tuple[str, ...],
    config: dict[str, object],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _settings(*argv, config=config)
    assert message in capsys.readouterr().err


def test_a_registration_without_a_zone_is_in_the_nodes_zone() -> None:
    static = node_pb2.Registration(service="orders", address="10.0.0.1:1")
    placed = node_pb2.Registration(service="orders", address="10.0.0.2:1", zone="b")
    reporter = Reporter("node-1", None, [static, placed], zone="a")
    reporter.register(node_pb2.Registration(service="billing", address="10.0.0.3:1"))
    zones = {r.address: r.zone for r in reporter.registrations.values()}
    assert zones == {"10.0.0.1:1": "a", "10.0.0.2:1": "b", "10.0.0.3:1": "a"}
