"""mesh-control end to end: real processes on 127.0.0.1, services applied with meshctl, and
grpcio's own xDS client (``xds:///echo``, bootstrap pointing at the control server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import meshctl, records, service_yaml, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_xds_client_follows_applied_config(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control(store=f"file:{tmp_path / 'store'}")
    _, one = procs.start_backend("backend-1")
    _, two = procs.start_backend("backend-2")
    out = meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", one)))
    assert out.startswith("service/echo configured (revision ")

    client = procs.start_client(control, "echo")
    wait_for(
        lambda: any(c.get("backend") == "backend-1" for c in records(client)),
        30,
        "the xDS client's first successful call",
    )

    meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", one, two)))
    seen = len(records(client))
    wait_for(
        lambda: any(c.get("backend") == "backend-2" for c in records(client)[seen:]),
        20,
        "traffic to reach the second endpoint",
    )

    table = meshctl(control, "get", "services")
    assert "echo" in table
    stored = json.loads(meshctl(control, "get", "services", "echo", "-o", "json"))
    assert stored["services"][0]["service"]["endpoints"] == [{"address": one}, {"address": two}]
    assert stored["services"][0]["revision"] >= 2

    meshctl(control, "delete", "service", "echo")
    seen = len(records(client))
    failure = wait_for(
        lambda: next((c for c in records(client)[seen:] if not c["ok"]), None),
        30,
        "the client to fail once the service is deleted",
    )
    assert failure["code"] == "UNAVAILABLE", failure

    status = status_json(control)
    node = next(n for n in status["nodes"] if n["node_id"] == "client-1")
    types = {t["type_url"].rsplit(".", 1)[-1]: t for t in node["types"]}
    assert {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"} <= set(types)
    for t in types.values():
        assert t["version_sent"] == t["version_acked"], t


def test_meshctl_reports_errors_with_a_reason(procs: MeshProcesses, tmp_path: Path) -> None:
    _, control = procs.start_control()
    result = run_cli("control.meshctl", "--control", control, "delete", "service", "nope")
    assert result.returncode != 0
    assert result.stderr.startswith("meshctl: not found:") and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli(
        "control.meshctl", "--control", "127.0.0.1:1", "--timeout", "1", "get", "services"
    )
    assert result.returncode != 0
    assert "cannot reach mesh-control at 127.0.0.1:1" in result.stderr


def test_hand_edits_reach_the_client_and_broken_ones_are_ignored(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    _, control = procs.start_control(store=f"file:{store}")
    _, one = procs.start_backend("backend-1")
    _, two = procs.start_backend("backend-2")
    meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", one)))
    client = procs.start_client(control, "echo")
    wait_for(
        lambda: any(c.get("backend") == "backend-1" for c in records(client)),
        30,
        "the first successful call",
    )

    # An operator edits the store directory by hand: the client follows.
    service_yaml(store / "echo.yaml", "echo", two)
    seen = len(records(client))
    wait_for(
        lambda: any(c.get("backend") == "backend-2" for c in records(client)[seen:]),
        20,
        "the hand edit to reach the client",
    )
    before = meshctl(control, "get", "services", "echo", "-o", "json")

    # A broken edit is reported; the last good config stays in force.
    (store / "echo.yaml").write_text("name: echo\nendpoints: [{address: 1.2.3.4}]\n")

    def reported() -> list[dict[str, str]]:
        return status_json(control).get("store_problems", [])

    problems = wait_for(reported, 10, "the broken file to be reported")
    assert problems[0]["source"].endswith("echo.yaml")
    assert "endpoints[0].address" in problems[0]["message"]
    assert meshctl(control, "get", "services", "echo", "-o", "json") == before
    seen = len(records(client))
    wait_for(lambda: len(records(client)) >= seen + 20, 20, "20 more calls")
    recent = records(client)[seen:]
    assert all(c.get("backend") == "backend-2" for c in recent), recent

    # Fixing the file clears the problem.
    service_yaml(store / "echo.yaml", "echo", one)
    wait_for(lambda: not reported(), 10, "the problem to clear")


def test_validate_names_the_field_and_changes_nothing(procs: MeshProcesses, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "retry.yaml").write_text("name: orders\npolicy:\n  retry: {attempts: 9}\n")
    (bad / "unknown.yaml").write_text("name: users\npolicy: {timeuot: 2s}\n")
    (bad / "duration.yaml").write_text("name: carts\npolicy: {timeout: 2 parsecs}\n")
    (bad / "address.yaml").write_text("name: pay\nendpoints: [{address: '10.0.0.1'}]\n")
    result = run_cli("control.meshctl", "validate", "-f", str(bad))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        "retry.yaml: document 1 (orders): policy.retry.attempts: must be between 1 and 5" in lines
    )
    assert any(
        line.startswith("unknown.yaml: document 1 (users): policy: unknown field 'timeuot'")
        for line in lines
    ), lines
    assert any(
        line.startswith("duration.yaml: document 1 (carts): policy.timeout:") for line in lines
    )
    assert any(
        line.startswith("address.yaml: document 1 (pay): endpoints[0].address:") for line in lines
    )

    _, control = procs.start_control(store=f"file:{tmp_path / 'store'}")
    good = service_yaml(tmp_path / "good.yaml", "orders", "127.0.0.1:7000")
    meshctl(control, "apply", "-f", str(good))
    before = meshctl(control, "get", "services", "-o", "json")
    for path in sorted(bad.iterdir()):
        result = run_cli("control.meshctl", "--control", control, "apply", "-f", str(path))
        assert result.returncode == 1, path
        assert "nothing applied" in result.stderr
    assert meshctl(control, "get", "services", "-o", "json") == before


def test_short_route_timeouts_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "fast.yaml"
    path.write_text("name: fast\npolicy: {timeout: 500ms}\n")
    result = run_cli("control.meshctl", "validate", "-f", str(path))
    assert result.returncode == 0
    assert "service/fast: policy.timeout 0.5s is under 2s" in result.stderr
    # Only raw grpcio xDS channels are affected: mesh_channel() applies the timeout itself.
    warning = result.stderr.strip()
    assert len(warning.splitlines()) == 1, warning
    assert "raw grpcio" in warning and "mesh_channel() is not affected" in warning, warning


def test_route_timeout_reaches_grpcio(procs: MeshProcesses, tmp_path: Path) -> None:
    """The served timeout is enforced by grpcio's own client (early, see README)."""
    _, control = procs.start_control()
    _, slow = procs.start_backend("slow", "--delay", "6")
    path = tmp_path / "slow.yaml"
    path.write_text(f"name: slow\nendpoints: [{{address: '{slow}'}}]\npolicy: {{timeout: 3s}}\n")
    meshctl(control, "apply", "-f", str(path))
    client = procs.python(
        "client",
        "mesh_demo.client",
        "--service",
        "slow",
        "--xds-server",
        control,
        "--interval",
        "0.1",
        "--timeout",
        "20",
        "--count",
        "2",
        "--json",
    )
    wait_for(lambda: len(records(client)) >= 2, 40, "two calls")
    for call in records(client):
        assert call["code"] == "DEADLINE_EXCEEDED", call
        assert float(call["ms"]) < 3500, call  # the route's 3s, not the call's own 20s
