"""Consistent hashing (gRFC A42) piece by piece: the rules of ``policy.hash`` and the warnings
of a hash that does not do what it seems, the resources it becomes (a ``hash_policy`` on every
route, the alias Listener's included, and a ``ring_hash_lb_config`` on every Cluster, the
subsets' included), what the agent's cache makes of them, and the line ``meshctl get services
NAME`` shows."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control.config import dump_yaml, load_documents, service_to_dict
from control.meshctl.services import hash_text, traffic_lines
from control.resources import CHANNEL_ID_KEY, build_resources
from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError
from mesh_core.names import client_listener_name
from mesh_core.validation import validate_warnings
from mesh_xds.types import CLUSTER, LISTENER, ROUTE
from tests.unit.agent_caches import agent_cache

pytestmark = pytest.mark.timeout(30)

CARTS = """\
name: carts
endpoints:
  - {address: 10.0.0.1:50051, labels: {version: v1}}
  - {address: 10.0.0.2:50051, labels: {version: v2}}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
policy: {timeout: 5s, lb: ring_hash, hash: HASH}
routes:
  - name: refunds
    match: {method: /shop.Carts/Refund}
    to: {v2: 1}
    policy: {timeout: 30s}
  - name: beta
    match: {headers: {x-beta: {present: true}}}
    to: {v1: 1}
"""
HEADER = "{header: x-user-id}"
CHANNEL = "{channel: true, min_ring_size: 16, max_ring_size: 64}"


def carts(hash_yaml: str = HEADER, text: str = CARTS) -> config_pb2.Service:
    (service,) = load_documents(text.replace("HASH", hash_yaml), "carts.yaml")
    assert isinstance(service, config_pb2.Service)
    return service


def service(policy: str, routes: str = "") -> config_pb2.Service:
    text = (
        "name: s\nendpoints: [{address: '10.0.0.1:1', labels: {v: a}}]\n"
        "subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]\n"
        f"policy: {policy}\n{routes}"
    )
    (loaded,) = load_documents(text, "s.yaml")
    assert isinstance(loaded, config_pb2.Service)
    return loaded


# -- validation ------------------------------------------------------------------------------

REFUSED = [
    (
        "{hash: {header: x-user-id}}",
        "policy.hash: is used only by lb: ring_hash, got no lb (round_robin); "
        "set lb: ring_hash or remove hash",
    ),
    (
        "{lb: round_robin, hash: {channel: true}}",
        "policy.hash: is used only by lb: ring_hash, got lb 'round_robin'",
    ),
    (
        "{lb: ring_hash, hash: {}}",
        "policy.hash: needs exactly one of header (a metadata key, like header: x-user-id) or "
        "channel: true; got neither",
    ),
    ("{lb: ring_hash, hash: {channel: false}}", "policy.hash: needs exactly one of"),
    (
        "{lb: ring_hash, hash: {header: x-user-id, channel: true}}",
        "policy.hash: needs exactly one of header (a metadata key, like header: x-user-id) or "
        "channel: true; got both",
    ),
    (
        "{lb: ring_hash, hash: {header: x-user-bin}}",
        "policy.hash.header: binary headers ('x-user-bin' ends in '-bin') cannot be matched",
    ),
    (
        "{lb: ring_hash, hash: {header: grpc-timeout}}",
        "policy.hash.header: gRPC's own headers ('grpc-timeout' starts with 'grpc-')",
    ),
    (
        "{lb: ring_hash, hash: {header: X-User}}",
        "policy.hash.header: must be a metadata key: lowercase letters",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 0}}",
        "policy.hash.min_ring_size: must be at least 1, got 0",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, max_ring_size: 0}}",
        "policy.hash.max_ring_size: must be at least 1, got 0",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 4097}}",
        "policy.hash.min_ring_size: must be at most 4096, got 4097: gRPC caps the ring at "
        "4,096 entries by default, so a larger ring is never built",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, max_ring_size: 8388608}}",
        "policy.hash.max_ring_size: must be at most 4096, got 8388608: gRPC caps the ring",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 2048, max_ring_size: 1024}}",
        "policy.hash.max_ring_size: must be at least min_ring_size (2048), got 1024",
    ),
    (
        "{lb: ring_hash, hash: {channel: true, max_ring_size: 512}}",
        "policy.hash.max_ring_size: must be at least min_ring_size, which is 1024 when unset; "
        "got 512: set min_ring_size too (at most 512)",
    ),
    ("{lb: ring_hash, hash: {header: 7}}", "policy.hash.header: expected a string"),
    ("{lb: ring_hash, hash: {min: 5}}", "policy.hash: unknown field 'min'"),
]


@pytest.mark.parametrize(("policy", "expected"), REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_validation_refuses_a_hash_naming_the_field(policy: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        service(policy)
    assert expected in str(error.value), error.value.problems


@pytest.mark.parametrize(
    "policy",
    [
        "{lb: ring_hash, hash: {header: x-user-id}}",
        "{lb: ring_hash, hash: {channel: true}}",
        "{lb: ring_hash, hash: {header: x-user-id, channel: false}}",
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 1, max_ring_size: 1}}",
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 1024, max_ring_size: 4096}}",
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 4096}}",
        "{lb: ring_hash, hash: {channel: true, max_ring_size: 1024}}",
        "{lb: ring_hash, hash: {channel: true, min_ring_size: 8, max_ring_size: 8}}",
    ],
)
def test_validation_accepts_a_hash_on_a_header_or_the_channel(policy: str) -> None:
    loaded = service(policy)
    assert loaded.policy.HasField("hash")
    # What is written reads back the same (meshctl get -o yaml, then apply).
    (again,) = load_documents(dump_yaml(service_to_dict(loaded)), "again.yaml")
    assert again == loaded


def test_unset_ring_sizes_stay_unset_and_zero_is_told_apart() -> None:
    hashed = service("{lb: ring_hash, hash: {channel: true}}").policy.hash
    assert not hashed.HasField("min_ring_size") and not hashed.HasField("max_ring_size")
    with pytest.raises(ConfigError):
        service("{lb: ring_hash, hash: {channel: true, min_ring_size: 0}}")


# -- warnings --------------------------------------------------------------------------------

RANDOM = (
    "ring_hash without policy.hash: each call hashes at random and spreads like round robin; "
    "add hash: {header: NAME} or hash: {channel: true}"
)
NOT_STICKY = (
    "not sticky across subsets: the split is chosen before the hash, so calls with the same "
    "hash may go to different subsets (the hash keeps them on one endpoint within each)"
)


@pytest.mark.parametrize(
    ("policy", "routes", "expected"),
    [
        ("{lb: ring_hash}", "", [("policy.lb", RANDOM)]),
        ("{lb: ring_hash}", "routes: [{to: {a: 1, b: 1}}]", [("policy.lb", RANDOM)]),
        ("{lb: round_robin}", "routes: [{to: {a: 1, b: 1}}]", []),
        ("{}", "", []),
        ("{lb: ring_hash, hash: {header: x-user-id}}", "", []),
        (
            "{lb: ring_hash, hash: {header: x-user-id}}",
            "routes: [{match: {method: /a.B/C}, to: {a: 9, b: 1}}, {to: {a: 1}}]",
            [("routes[0].to", NOT_STICKY)],
        ),
        (
            "{lb: ring_hash, hash: {channel: true}}",
            "routes: [{match: {method: /a.B/C}, to: {a: 1}}, {to: {a: 3, b: 1}}]",
            [("routes[1].to", NOT_STICKY)],
        ),
        # One subset with weight above 0 is no split.
        ("{lb: ring_hash, hash: {channel: true}}", "routes: [{to: {a: 0, b: 5}}]", []),
    ],
)
def test_warnings_name_the_field(policy: str, routes: str, expected: list[tuple[str, str]]) -> None:
    assert validate_warnings(service(policy, routes)) == expected


def test_meshctl_apply_and_validate_print_the_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    from control.meshctl.commands import _warn_about

    _warn_about(
        [
            service("{lb: ring_hash}"),
            service("{lb: ring_hash, hash: {header: x-k}}", "routes: [{to: {a: 1, b: 1}}]"),
        ]
    )
    assert capsys.readouterr().err.splitlines() == [
        f"meshctl: warning: service/s: policy.lb: {RANDOM}",
        f"meshctl: warning: service/s: routes[0].to: {NOT_STICKY}",
    ]


# -- resources -------------------------------------------------------------------------------


def _header(name: str) -> route_components_pb2.RouteAction.HashPolicy:
    hashed = route_components_pb2.RouteAction.HashPolicy()
    hashed.header.header_name = name
    return hashed


def _channel() -> route_components_pb2.RouteAction.HashPolicy:
    hashed = route_components_pb2.RouteAction.HashPolicy()
    hashed.filter_state.key = CHANNEL_ID_KEY
    return hashed


def _alias_routes(listener: object) -> route_pb2.RouteConfiguration:
    assert isinstance(listener, listener_pb2.Listener)
    manager = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(manager)
    return manager.route_config


@pytest.mark.parametrize(
    ("hash_yaml", "expected"),
    [(HEADER, _header("x-user-id")), (CHANNEL, _channel())],
    ids=["header", "channel"],
)
def test_every_route_carries_the_hash_policy(
    hash_yaml: str, expected: route_components_pb2.RouteAction.HashPolicy
) -> None:
    resources = build_resources([carts(hash_yaml)])
    own = resources[ROUTE]["carts"]
    alias = _alias_routes(resources[LISTENER][client_listener_name("carts")])
    for config in (own, alias):
        assert isinstance(config, route_pb2.RouteConfiguration)
        entries = config.virtual_hosts[0].routes
        # The route with its own timeout, the one with none, and the default route.
        assert [entry.name for entry in entries] == ["refunds", "beta", "default"]
        for entry in entries:
            assert list(entry.route.hash_policy) == [expected], entry


def test_a_route_of_its_own_keeps_its_policy_beside_the_hash() -> None:
    resources = build_resources([carts()])
    config = resources[ROUTE]["carts"]
    assert isinstance(config, route_pb2.RouteConfiguration)
    refunds, beta, default = config.virtual_hosts[0].routes
    assert refunds.route.max_stream_duration.max_stream_duration.seconds == 30
    assert beta.route.max_stream_duration.max_stream_duration.seconds == 5
    assert (refunds.route.cluster, beta.route.cluster, default.route.cluster) == (
        "carts/v2",
        "carts/v1",
        "carts",
    )


def test_without_a_hash_no_route_has_a_hash_policy() -> None:
    text = CARTS.replace(", hash: HASH", "")
    resources = build_resources([carts(text=text)])
    config = resources[ROUTE]["carts"]
    assert isinstance(config, route_pb2.RouteConfiguration)
    assert all(not entry.route.hash_policy for entry in config.virtual_hosts[0].routes)
    cluster = resources[CLUSTER]["carts"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    # ring_hash all the same, with the clients' default ring.
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.HasField("ring_hash_lb_config")
    assert not cluster.ring_hash_lb_config.HasField("minimum_ring_size")


def test_every_cluster_carries_the_ring() -> None:
    resources = build_resources([carts(CHANNEL)])
    assert set(resources[CLUSTER]) == {"carts", "carts/v1", "carts/v2"}
    for name, cluster in resources[CLUSTER].items():
        assert isinstance(cluster, cluster_pb2.Cluster)
        assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH, name
        ring = cluster.ring_hash_lb_config
        assert ring.hash_function == cluster_pb2.Cluster.RingHashLbConfig.XX_HASH, name
        assert (ring.minimum_ring_size.value, ring.maximum_ring_size.value) == (16, 64), name


def test_a_ring_with_one_bound_sets_that_bound_only() -> None:
    hashed = "{header: x-user-id, max_ring_size: 2048}"
    cluster = build_resources([carts(hashed)])[CLUSTER]["carts/v1"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    ring = cluster.ring_hash_lb_config
    assert not ring.HasField("minimum_ring_size")
    assert ring.maximum_ring_size.value == 2048


def test_round_robin_clusters_have_no_ring() -> None:
    plain = service("{lb: round_robin}")
    for cluster in build_resources([plain])[CLUSTER].values():
        assert isinstance(cluster, cluster_pb2.Cluster)
        assert not cluster.HasField("ring_hash_lb_config")


def test_the_agents_cache_takes_the_hashed_resources() -> None:
    resources = build_resources([carts(CHANNEL)])
    agent_cache(resources, {t: resources[t] for t in (CLUSTER, ROUTE, LISTENER)})


# -- meshctl get services NAME ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "shown"),
    [
        ("{lb: ring_hash, hash: {header: x-user-id}}", "hash: header x-user-id (ring 1024-4096)"),
        (
            "{lb: ring_hash, hash: {channel: true, min_ring_size: 16, max_ring_size: 64}}",
            "hash: channel (ring 16-64)",
        ),
        (
            "{lb: ring_hash, hash: {channel: true, min_ring_size: 4096}}",
            "hash: channel (ring 4096-4096)",
        ),
        (
            "{lb: ring_hash, hash: {channel: true, max_ring_size: 2048}}",
            "hash: channel (ring 1024-2048)",
        ),
        (
            "{lb: ring_hash}",
            "hash: none (each call hashes at random, spreading like round robin)",
        ),
        ("{lb: round_robin}", None),
        ("{}", None),
    ],
)
def test_meshctl_shows_what_calls_are_hashed_on(policy: str, shown: str | None) -> None:
    assert hash_text(service(policy).policy) == shown


def test_the_hash_line_comes_before_the_tables_and_alone_without_them() -> None:
    lines = traffic_lines(carts())
    assert lines[:3] == ["", "hash: header x-user-id (ring 1024-4096)", ""]
    assert lines[3].startswith("SUBSET")
    (plain,) = load_documents(
        "name: s\nendpoints: [{address: '10.0.0.1:1'}]\n"
        "policy: {lb: ring_hash, hash: {channel: true}}\n",
        "s.yaml",
    )
    assert traffic_lines(plain) == ["", "hash: channel (ring 1024-4096)"]
