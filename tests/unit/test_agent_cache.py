"""The agent's cache takes incremental (delta xDS) responses: updates and removals land
together or not at all."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from control.resources import build_cluster
from mesh.v1 import config_pb2
from mesh_agent.daemon.cache import ConfigCache
from mesh_xds.types import CLUSTER

pytestmark = pytest.mark.timeout(10)


def cluster(name: str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(build_cluster(config_pb2.Service(name=name)))
    return packed


def test_updates_and_removals_apply_together() -> None:
    cache = ConfigCache(None, "node-1")
    assert cache.accept_delta(CLUSTER, "v1", [cluster("a"), cluster("b")], []) is None
    assert cache.names(CLUSTER) == {"a", "b"} and cache.version(CLUSTER) == "v1"
    assert cache.accept_delta(CLUSTER, "v2", [cluster("c")], ["a"]) is None
    assert cache.names(CLUSTER) == {"b", "c"} and cache.version(CLUSTER) == "v2"


def test_a_bad_response_changes_nothing() -> None:
    cache = ConfigCache(None, "node-1")
    cache.accept_delta(CLUSTER, "v1", [cluster("a")], [])
    garbage = any_pb2.Any(type_url=f"type.googleapis.com/{CLUSTER.rsplit('/', 1)[-1]}")
    garbage.value = b"\xff\xff"
    error = cache.accept_delta(CLUSTER, "v2", [cluster("b"), garbage], ["a"])
    assert error
    duplicate = cache.accept_delta(CLUSTER, "v3", [cluster("b"), cluster("b")], [])
    assert duplicate and "duplicate" in duplicate
    both = cache.accept_delta(CLUSTER, "v4", [cluster("b")], ["b"])
    assert both and "both updated and removed" in both
    assert cache.names(CLUSTER) == {"a"} and cache.version(CLUSTER) == "v1"
