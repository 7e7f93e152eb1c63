"""Consistent hashing (gRFC A42) piece by piece: the rules of ``policy.hash`` and the warnings
of a hash that does not do what it seems, the resources it becomes (a ``hash_policy`` on every
route, the alias Listener's included, and a ``ring_hash_lb_config`` on every Cluster, the
subsets' included), what the agent's cache makes of them, and the line ``meshctl get services
NAME`` shows."""

from __future__ import annotations

import pytest

from control.config import dump_yaml, load_documents, service_to_dict
from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_warnings

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
    return service


def service(policy: str, routes: str = "") -> config_pb2.Service:
    text = (
        "name: s\nendpoints: [{address: '10.0.0.1:1', labels: {v: a}}]\n"
        "subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]\n"
        f"policy: {policy}\n{routes}"
    )
    (loaded,) = load_documents(text, "s.yaml")
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
