"""``meshctl status`` with real processes: each node's config state, its agent's health and
open breakers (reported by the agent through ``mesh.v1.NodeService``), the summary line, and
``--watch``."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from mesh_xds.testing import AdsClient
from mesh_xds.types import LISTENER
from tests.conftest import Proc, eventually, wait_for
from tests.e2e.conftest import EtcdServer, MeshProcesses
from tests.e2e.helpers import (
    configure,
    install_plugin,
    json_node,
    meshctl,
    plugin_env,
    records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BUILTIN_COMPONENTS = {
    "cache",
    "upstream",
    "health",
    "breakers",
    "reporter",
    "identities",
    "traffic",
    "server",
}
SUMMARY = re.compile(
    r"^(\d+) node\(s\): (\d+) on the latest config, (\d+) NACKed, (\d+) not serving, "
    r"(\d+) with open breakers, (\d+) with degrading services, (\d+) without a stream$"
)


def summary(table: str) -> tuple[int, ...]:
    """The counts of the summary line (the last line of the table output)."""
    match = SUMMARY.match(table.splitlines()[-1])
    assert match, f"no summary line at the end of:\n{table}"
    return tuple(int(g) for g in match.groups())


def table_rows(table: str, header: str) -> list[list[str]]:
    """The rows (split on runs of 2+ spaces) of the table whose header line starts ``header``."""
    lines = table.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        return []
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or SUMMARY.match(line) or line.startswith("store problem:"):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def rows_of(table: str, first_columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of the table whose header begins with ``first_columns``."""
    lines = table.splitlines()
    for i, line in enumerate(lines):
        if tuple(line.split()[: len(first_columns)]) == first_columns:
            return table_rows("\n".join(lines[i:]), line)
    return []


def start_breaker_setup(procs: MeshProcesses, tmp_path: Path) -> tuple[str, str, str]:
    """A control server, a backend behind service ``flaky`` with a breaker policy, and two
    agents (node-1, which callers use, and node-2, idle)."""
    _, control = procs.start_control()
    _, backend = procs.start_backend("b1", proc_name="backend")
    path = tmp_path / "flaky.yaml"
    path.write_text(
        f"name: flaky\nendpoints: [{{address: '{backend}'}}]\npolicy:\n"
        "  circuit_breaker: {consecutive_failures: 3, open_for: 4s, half_open_probes: 1}\n"
    )
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1")
    procs.start_agent(control, "node-2")
    return control, backend, agent


def test_open_breaker_and_agent_health_in_status(procs: MeshProcesses, tmp_path: Path) -> None:
    control, backend, agent = start_breaker_setup(procs, tmp_path)
    wait_for(
        lambda: summary(meshctl(control, "status"))[:2] == (2, 2),
        20,
        "both nodes on the latest config",
    )
    table = meshctl(control, "status")
    assert table.splitlines()[0].startswith("server ")
    assert "store revision 1, serving snapshot of revision 1, 2 node stream(s)" in table
    assert "NODE    TYPE" in table and "CONNECTED  LAST NACK" in table
    nodes = {row[0]: row for row in rows_of(table, ("NODE", "CONFIG", "HEALTH"))}
    assert nodes == {
        "node-1": ["node-1", "latest", "SERVING"],
        "node-2": ["node-2", "latest", "SERVING"],
    }
    assert not rows_of(table, ("NODE", "SERVICE", "STATE"))
    assert summary(table) == (2, 2, 0, 0, 0, 0, 0)
    health = json_node(control, "node-1")["health"]
    assert health["status"] == "SERVING"
    assert {c["name"] for c in health["components"]} == BUILTIN_COMPONENTS
    assert all(c["state"] == "running" for c in health["components"])
    assert not health.get("breakers")

    # The backend fails: a caller on node-1 opens the node's breaker.
    configure(backend, fail="UNAVAILABLE")
    client = procs.mesh_client("A", agent, "flaky", "--interval", "0.05")
    wait_for(
        lambda: json_node(control, "node-1")["health"].get("breakers"),
        20,
        "the open breaker to reach mesh-control",
    )
    opened = json_node(control, "node-1")["health"]["breakers"]
    assert len(opened) == 1, opened
    assert opened[0]["service"] == "flaky" and opened[0]["state"] == "open"
    assert opened[0]["reason"] == "consecutive_failures"
    assert int(opened[0]["transitions"]) >= 1
    assert "open_until" in opened[0] and "since" in opened[0]
    assert not json_node(control, "node-2")["health"].get("breakers")

    table = meshctl(control, "status")
    rows = rows_of(table, ("NODE", "SERVICE", "STATE"))
    assert len(rows) == 1, table
    node, service, state, until, left, since, reason = rows[0]
    assert (node, service, state, reason) == ("node-1", "flaky", "open", "consecutive_failures")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", until), until
    assert re.fullmatch(r"\d+s", left) and int(left[:-1]) <= 4, left
    assert re.fullmatch(r"\d+s", since), since
    assert summary(table)[4] == 1  # with open breakers
    assert "OPEN UNTIL" in table and "REASON" in table

    # The backend recovers: the probe succeeds, the breaker closes and its row goes.
    configure(backend)
    wait_for(
        lambda: not json_node(control, "node-1")["health"].get("breakers"),
        20,
        "the closed breaker to leave mesh-control's status",
    )
    seen = len(records(client))
    wait_for(lambda: any(r["ok"] for r in records(client)[seen:]), 10, "calls to succeed again")
    table = meshctl(control, "status")
    assert not rows_of(table, ("NODE", "SERVICE", "STATE")), table
    assert summary(table)[4] == 0


def test_failing_component_shows_as_not_serving(procs: MeshProcesses, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    install_plugin(plugin)
    (plugin / "fail-start").touch()
    _, control = procs.start_control()
    procs.start_agent(control, "node-a", env=plugin_env(procs, plugin))

    def flaky() -> dict[str, Any]:
        health = json_node(control, "node-a").get("health") or {}
        return next((c for c in health.get("components", []) if c["name"] == "flaky"), {})

    wait_for(lambda: int(flaky().get("restarts", 0)) >= 1, 20, "the failing component reported")
    health = json_node(control, "node-a")["health"]
    assert health["status"] == "NOT_SERVING"
    assert {c["name"] for c in health["components"]} == BUILTIN_COMPONENTS | {"flaky"}
    assert "flaky start failure" in flaky()["last_error"]
    assert flaky()["state"] in ("failed", "restarting")

    table = meshctl(control, "status")
    node = rows_of(table, ("NODE", "CONFIG", "HEALTH"))
    assert len(node) == 1 and node[0][0] == "node-a", table
    assert re.fullmatch(r"NOT_SERVING \(flaky: (failed|restarting)\)", node[0][2]), node
    components = rows_of(table, ("NODE", "COMPONENT", "STATE"))
    assert len(components) == 1, table
    assert components[0][:2] == ["node-a", "flaky"]
    assert "flaky start failure" in components[0][4]
    assert summary(table)[3] == 1  # not serving

    (plugin / "fail-start").unlink()
    wait_for(
        lambda: json_node(control, "node-a")["health"]["status"] == "SERVING",
        20,
        "the component to come up and the agent to report SERVING",
    )
    table = meshctl(control, "status")
    assert rows_of(table, ("NODE", "CONFIG", "HEALTH"))[0][2] == "SERVING"
    assert not rows_of(table, ("NODE", "COMPONENT", "STATE"))
    assert summary(table)[3] == 0


@pytest.mark.timeout(90)
def test_summary_counts_nacked_and_streamless_nodes(procs: MeshProcesses) -> None:
    grace = 2.0
    _, control = procs.start_control("--registration-grace", f"{grace:g}s")
    agent_proc, _ = procs.start_agent(control, "node-a")
    wait_for(
        lambda: (json_node(control, "node-a").get("health") or {}).get("status") == "SERVING",
        20,
        "node-a's health",
    )

    async def with_nacker() -> None:
        nacker = AdsClient(control, "nacker", reject=lambda r: "listener rejected: test")
        async with nacker:
            nacker.subscribe(LISTENER)
            await nacker.wait_for(lambda c: bool(c.of_type(LISTENER)))

            async def counted() -> str | None:
                table = await asyncio.to_thread(meshctl, control, "status")
                return table if summary(table) == (2, 1, 1, 0, 0, 0, 0) else None

            table = await eventually(counted, 60, "the summary to count the NACK", every=0.1)
            nodes = {row[0]: row for row in rows_of(table, ("NODE", "CONFIG", "HEALTH"))}
            assert nodes["nacker"] == ["nacker", "NACKED", "-"]  # no agent, no health
            assert nodes["node-a"] == ["node-a", "latest", "SERVING"]

    asyncio.run(with_nacker())

    # The agent goes: its last health stays for the grace, with no stream, then goes.
    agent_proc.stop()
    stopped = time.monotonic()

    def streamless() -> str | None:
        table = meshctl(control, "status")
        return table if summary(table)[-1] == 1 else None

    table = wait_for(streamless, 5, "node-a to show without a stream")
    assert summary(table) == (1, 0, 0, 0, 0, 0, 1), table
    assert rows_of(table, ("NODE", "CONFIG", "HEALTH"))[0][:2] == ["node-a", "no stream"]
    assert json_node(control, "node-a")["health"]["components"]
    wait_for(lambda: not json_node(control, "node-a"), 10, "node-a dropped after the grace")
    assert time.monotonic() - stopped >= grace * 0.8
    assert summary(meshctl(control, "status")) == (0, 0, 0, 0, 0, 0, 0)


def separators(proc: Proc) -> list[int]:
    return [i for i, line in enumerate(proc.lines()) if line.startswith("--- ")]


def test_watch_redraws_until_interrupted(procs: MeshProcesses, tmp_path: Path) -> None:
    control_proc, control = procs.start_control()
    watch = procs.python(
        "watch", "control.meshctl", "--control", control, "status", "--watch", "--interval", "0.3"
    )
    wait_for(lambda: len(separators(watch)) >= 2, 20, "two refreshes")
    output = watch.output()
    assert "\x1b[" not in output, "no screen clearing when stdout is not a terminal"
    assert "store revision 0, serving snapshot of revision 0" in output

    # A change between refreshes shows in a later one.
    (tmp_path / "s.yaml").write_text("name: echo\nendpoints: [{address: 127.0.0.1:9}]\n")
    meshctl(control, "apply", "-f", str(tmp_path / "s.yaml"))
    seen = len(separators(watch))
    wait_for(
        lambda: "store revision 1, serving snapshot of revision 1" in watch.output(),
        20,
        "the applied change in a later refresh",
    )
    assert len(separators(watch)) > seen
    last = watch.lines()[separators(watch)[-1] :]
    assert last[1].startswith("server ") and SUMMARY.match(last[-1]), last

    # The server goes away: an error line per refresh, and the watch goes on.
    control_proc.stop()
    wait_for(lambda: "cannot reach mesh-control at" in watch.output(), 20, "the unreachable server")
    errors = len(separators(watch))
    wait_for(lambda: len(separators(watch)) >= errors + 2, 20, "refreshes after the error")
    assert watch.alive

    assert watch.stop(signal.SIGINT) == 0
    assert "Traceback" not in watch.errors(), watch.errors()


def test_watch_json_prints_one_document_per_line(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    procs.start_agent(control, "node-a")
    watch = procs.python(
        "watch",
        "control.meshctl",
        "--control",
        control,
        "status",
        "-o",
        "json",
        "--watch",
        "--interval",
        "0.2",
    )

    def documents() -> list[dict[str, Any]]:
        return [json.loads(line) for line in watch.lines()[:-1]]  # the last may be partial

    wait_for(
        lambda: any(
            (n.get("health") or {}).get("status") == "SERVING"
            for d in documents()
            for n in d.get("nodes", [])
        ),
        20,
        "a document with node-a's health",
    )
    wait_for(lambda: len(documents()) >= 3, 10, "more refreshes")
    assert all("\n" not in line and line.startswith("{") for line in watch.lines())
    assert all(d["server_id"] for d in documents())
    assert watch.stop(signal.SIGINT) == 0
    assert "Traceback" not in watch.errors(), watch.errors()


def test_health_is_shared_through_etcd(procs: MeshProcesses, etcd: EtcdServer) -> None:
    store = etcd.url("/mesh")
    _, c1 = procs.start_control(store=store, name="control-1")
    _, c2 = procs.start_control(store=store, name="control-2")
    procs.start_agent(c1, "node-1")
    wait_for(
        lambda: (json_node(c2, "node-1").get("health") or {}).get("status") == "SERVING",
        20,
        "node-1's health on the other control server",
    )
    node = json_node(c2, "node-1")
    assert {c["name"] for c in node["health"]["components"]} == BUILTIN_COMPONENTS
    row = rows_of(meshctl(c2, "status"), ("NODE", "CONFIG", "HEALTH"))[0]
    assert row[0] == "node-1" and row[2] == "SERVING", row


@pytest.mark.parametrize("protocol", ["delta", "sotw"])
def test_status_right_after_a_control_server_restart(
    procs: MeshProcesses, tmp_path: Path, protocol: str
) -> None:
    """The agent resumes with the versions it holds and is sent nothing: status shows every
    type ACKed at the current version, not waiting, and the node on the latest config."""
    store = f"file:{tmp_path / 'store'}"
    # Restarted under its agent: no need to wait out the default drain of the agent's stream.
    first, control = procs.start_control("--drain-grace", "500ms", store=store)
    _, backend = procs.start_backend("b1", proc_name="backend")
    path = tmp_path / "echo.yaml"
    path.write_text(f"name: echo\nendpoints: [{{address: '{backend}'}}]\n")
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1", "--xds-protocol", protocol)
    client = procs.mesh_client("client-1", agent, "echo", "--interval", "0.2")
    wait_for(lambda: any(r["ok"] for r in records(client)), 30, "a call through the agent")

    def agent_types_settled() -> bool:
        node = json_node(control, "node-1")
        types = node.get("types", [])
        return len(types) >= 4 and all(t["version_acked"] == t["version_sent"] for t in types)

    wait_for(agent_types_settled, 20, "the agent to ACK everything")
    first.stop()
    procs.start_control(store=store, name="control-again", listen=control)

    def resumed() -> dict[str, Any] | None:
        node = json_node(control, "node-1")
        return node if len(node.get("types", [])) >= 4 else None

    node = wait_for(resumed, 30, "the agent to resume on the restarted server")
    for t in node["types"]:
        assert t["version_sent"] and t["version_sent"] == t["version_acked"], t
    table = meshctl(control, "status")
    rows = [r for r in rows_of(table, ("NODE", "TYPE")) if r[0] == "node-1"]
    assert rows and all(r[4] == "ACKED" for r in rows), table
    assert summary(table)[:2] == (1, 1), table
