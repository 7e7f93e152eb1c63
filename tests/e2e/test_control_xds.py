"""mesh-control end to end: real processes on 127.0.0.1, services applied with meshctl, and
grpcio's own xDS client (``xds:///echo``, bootstrap pointing at the control server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Proc, Processes, run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def meshctl(control: str, *args: str) -> str:
    result = run_cli("control.meshctl", "--control", control, *args)
    assert result.returncode == 0, f"meshctl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def service_yaml(path: Path, name: str, *addresses: str) -> Path:
    lines = [f"name: {name}", "endpoints:"] + [f"  - address: {a}" for a in addresses]
    if not addresses:
        lines[-1] = "endpoints: []"
    lines += ["policy:", "  timeout: 2s", "  retry: {attempts: 2, retry_on: [UNAVAILABLE]}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def calls(client: Proc) -> list[dict[str, object]]:
    return [json.loads(line) for line in client.lines() if line.startswith("{")]


def start_control(procs: Processes, store: str, *extra: str) -> str:
    _, address = procs.start_ready(
        "control", "control", "serve", "--listen", "127.0.0.1:0", "--store", store, *extra
    )
    return address


def start_backend(procs: Processes, name: str) -> str:
    _, address = procs.start_ready(name, "mesh_demo.backend", "--name", name)
    return address


def start_client(procs: Processes, xds_server: str, service: str, node: str = "client-1") -> Proc:
    return procs.python(
        node,
        "mesh_demo.client",
        "--service",
        service,
        "--xds-server",
        xds_server,
        "--node-id",
        node,
        "--interval",
        "0.05",
        "--timeout",
        "1",
        "--json",
    )


def test_xds_client_follows_applied_config(procs: Processes, tmp_path: Path) -> None:
    control = start_control(procs, f"file:{tmp_path / 'store'}")
    one = start_backend(procs, "backend-1")
    two = start_backend(procs, "backend-2")
    out = meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", one)))
    assert out.startswith("service/echo configured (revision ")

    client = start_client(procs, control, "echo")
    wait_for(
        lambda: any(c.get("backend") == "backend-1" for c in calls(client)),
        30,
        "the xDS client's first successful call",
    )

    meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", one, two)))
    seen = len(calls(client))
    wait_for(
        lambda: any(c.get("backend") == "backend-2" for c in calls(client)[seen:]),
        20,
        "traffic to reach the second endpoint",
    )

    table = meshctl(control, "get", "services")
    assert "echo" in table
    stored = json.loads(meshctl(control, "get", "services", "echo", "-o", "json"))
    assert stored["services"][0]["service"]["endpoints"] == [{"address": one}, {"address": two}]
    assert stored["services"][0]["revision"] >= 2

    meshctl(control, "delete", "service", "echo")
    seen = len(calls(client))
    failure = wait_for(
        lambda: next((c for c in calls(client)[seen:] if not c["ok"]), None),
        30,
        "the client to fail once the service is deleted",
    )
    assert failure["code"] == "UNAVAILABLE", failure

    status = json.loads(meshctl(control, "status", "-o", "json"))
    node = next(n for n in status["nodes"] if n["node_id"] == "client-1")
    types = {t["type_url"].rsplit(".", 1)[-1]: t for t in node["types"]}
    assert {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"} <= set(types)
    for t in types.values():
        assert t["version_sent"] == t["version_acked"], t


def test_meshctl_reports_errors_with_a_reason(procs: Processes, tmp_path: Path) -> None:
    control = start_control(procs, "memory:")
    result = run_cli("control.meshctl", "--control", control, "delete", "service", "nope")
    assert result.returncode != 0
    assert result.stderr.startswith("meshctl: not found:") and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli(
        "control.meshctl", "--control", "127.0.0.1:1", "--timeout", "1", "get", "services"
    )
    assert result.returncode != 0
    assert "cannot reach mesh-control at 127.0.0.1:1" in result.stderr
