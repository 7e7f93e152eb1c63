"""The service graph end to end: ``mesh_channel()`` callers through a real agent to real demo
backends, the agent's traffic reports to mesh-control, and ``meshctl top`` (table, ``-o json``,
``--watch``); then two control servers on one real etcd, the agent reporting to one and
``meshctl top`` asked of the other.

The module's mesh (one control server, agent ``node-1``, four backends, two callers) is shared
by the tests that only read it. ``orders`` has two endpoints behind round robin, both 30 ms
slow, one failing every call (INTERNAL): half its calls fail. ``payments`` has one endpoint
failing every call, and a breaker that opens after three failures in a row.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, wait_for
from tests.e2e.conftest import EtcdServer, MeshProcesses
from tests.e2e.helpers import meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DELAY = 0.03
JSON_KEYS = {"caller", "service", "rps", "error_rate", "p50_ms", "p99_ms", "breaker", "warning"}
SERVICES = """\
name: orders
endpoints: [{{address: '{ok}'}}, {{address: '{failing}'}}]
policy: {{timeout: 5s}}
---
name: payments
endpoints: [{{address: '{down}'}}]
policy: {{circuit_breaker: {{consecutive_failures: 3, open_for: 60s}}}}
"""
WAIT = 45.0  # agents report every 5 s; a loaded machine may take several reports


def top(control: str, *args: str) -> list[dict[str, Any]]:
    edges: list[dict[str, Any]] = json.loads(meshctl(control, "top", "-o", "json", *args))
    return edges


def edge(control: str, caller: str, service: str) -> dict[str, Any] | None:
    found = [e for e in top(control) if e["caller"] == caller and e["service"] == service]
    return found[0] if found else None


@dataclass
class Mesh:
    procs: MeshProcesses
    control: str
    agent: str


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("graph"))
    try:
        _, control = procs.start_control()
        delay = str(DELAY)
        _, ok = procs.start_backend("ok", "--delay", delay)
        _, failing = procs.start_backend("failing", "--delay", delay, "--fail", "INTERNAL")
        _, down = procs.start_backend("down", "--fail", "UNAVAILABLE")
        path = procs.workdir / "services.yaml"
        path.write_text(SERVICES.format(ok=ok, failing=failing, down=down))
        meshctl(control, "apply", "-f", str(path))
        _, agent = procs.start_agent(control, "node-1")
        # Named by $MESH_CALLER; the other by its client id (--node-id).
        procs.mesh_client(
            "frontend-proc",
            agent,
            "orders",
            "--interval",
            "0.02",
            env={"MESH_CALLER": "frontend"},
        )
        procs.mesh_client("checkout-7", agent, "payments", "--interval", "0.05")
        yield Mesh(procs, control, agent)
    finally:
        procs.stop_all()


def test_top_shows_rate_errors_and_latency_of_each_caller(mesh: Mesh) -> None:
    found = wait_for(
        lambda: (e := edge(mesh.control, "frontend", "orders")) and e["calls"] >= 100 and e,
        WAIT,
        "100 calls of frontend to orders in meshctl top",
    )
    assert set(found) >= JSON_KEYS
    assert found["node"] == "node-1"
    assert found["rps"] > 0
    # Round robin over one good and one failing endpoint: half the calls fail.
    assert 0.35 <= found["error_rate"] <= 0.65, found
    assert set(found["codes"]) == {"OK", "INTERNAL"}
    # Both endpoints answer after 30 ms: the quantiles sit above it, within reason.
    assert DELAY * 1000 <= found["p50_ms"] <= 250, found
    assert found["p50_ms"] <= found["p99_ms"] <= 2000, found
    assert (found["breaker"], found["warning"]) == ("", "")  # orders has no breaker policy

    table = meshctl(mesh.control, "top")
    header = table.splitlines()[0].split()
    assert header[:6] == ["CALLER", "→", "SERVICE", "RPS", "ERROR", "%"]
    row = next(line for line in table.splitlines() if line.startswith("frontend → orders"))
    assert "node-1" in row
    only = top(mesh.control, "--service", "orders")
    assert only and {e["service"] for e in only} == {"orders"}


def test_an_open_breaker_shows_on_its_edge(mesh: Mesh) -> None:
    # checkout-7 has no name of its own: it is its client id. Three failures open the
    # breaker; its later calls fail fast in the process, unreported, and the edge stays.
    found = wait_for(
        lambda: (
            (e := edge(mesh.control, "checkout-7", "payments")) and e["breaker"] == "open" and e
        ),
        WAIT,
        "checkout-7 to payments with its breaker open",
    )
    assert found["error_rate"] == 1.0
    assert found["codes"] == {"UNAVAILABLE": found["calls"]}
    assert found["calls"] >= 3
    row = next(line for line in meshctl(mesh.control, "top").splitlines() if "payments" in line)
    assert "open" in row.split()


def test_watch_redraws_until_interrupted(mesh: Mesh) -> None:
    watch = mesh.procs.python(
        "top-watch",
        "control.meshctl",
        "--control",
        mesh.control,
        "top",
        "--watch",
        "--interval",
        "0.3",
        "-o",
        "json",
    )
    documents = wait_for(
        lambda: (lines := _json_lines(watch)) and len(lines) >= 2 and lines, 30, "two refreshes"
    )
    for document in documents:
        assert isinstance(document, list)
        assert all(set(e) >= JSON_KEYS for e in document)
    assert watch.stop(signal.SIGINT) == 0
    assert "Traceback" not in watch.errors(), watch.errors()


def _json_lines(proc: Proc) -> list[Any]:
    return [json.loads(line) for line in proc.lines() if line.startswith("[")]


def test_top_of_another_control_server_on_the_same_etcd_shows_the_edge(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    _, first = procs.start_control(store=store, name="control-1")
    _, second = procs.start_control(store=store, name="control-2")
    _, backend = procs.start_backend("b1", "--delay", str(DELAY))
    path = tmp_path / "echo.yaml"
    path.write_text(f"name: echo\nendpoints: [{{address: '{backend}'}}]\n")
    meshctl(first, "apply", "-f", str(path))
    _, agent = procs.start_agent(first, "node-9")  # reports to control-1 only
    procs.mesh_client("web", agent, "echo", "--interval", "0.05")
    found = wait_for(
        lambda: (e := edge(second, "web", "echo")) and e["calls"] >= 20 and e,
        WAIT,
        "web to echo in meshctl top of control-2",
    )
    assert found["node"] == "node-9"
    assert found["rps"] > 0
    assert found["error_rate"] == 0.0
    assert DELAY * 1000 <= found["p50_ms"] <= 250, found
    mine = edge(first, "web", "echo")
    assert mine is not None and mine["node"] == "node-9"
