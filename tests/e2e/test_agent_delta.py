"""The agent's upstream speaks delta xDS to a control server that offers it (and state of the
world when told to, or when the server has no delta: see test_agent_resilience, whose
upstream serves state of the world only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Proc, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, meshctl, records, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _protocol(agent: Proc) -> str | None:
    for line in agent.errors().splitlines():
        if line.startswith("{") and '"upstream connected"' in line:
            return str(json.loads(line).get("protocol"))
    return None


def _service(path: Path, *addresses: str) -> Path:
    path.write_text(
        "name: echo\nendpoints:\n" + "".join(f"  - address: '{a}'\n" for a in addresses)
    )
    return path


@pytest.mark.parametrize("protocol", ["auto", "sotw"])
def test_agent_serves_the_node_over_either_protocol(
    procs: MeshProcesses, tmp_path: Path, protocol: str
) -> None:
    _, control = procs.start_control()
    _, b1 = procs.start_backend("b1")
    _, b2 = procs.start_backend("b2")
    meshctl(control, "apply", "-f", str(_service(tmp_path / "echo.yaml", b1)))
    proc, agent = procs.start_agent(control, "node-1", "--xds-protocol", protocol)
    expected = "delta" if protocol == "auto" else "sotw"
    assert wait_for(lambda: _protocol(proc), 20, "the upstream to connect") == expected

    first = procs.mesh_client("first", agent, "echo", "--count", "3", "--interval", "0.05")
    assert first.popen.wait(30) == 0, first.errors()[-2000:]
    answered = records(first)
    assert [r["backend"] for r in answered] == ["b1"] * 3, answered

    # A change reaches the node: the second endpoint is served, and calls spread.
    meshctl(control, "apply", "-f", str(_service(tmp_path / "echo.yaml", b1, b2)))

    def both() -> bool:
        client = procs.mesh_client("spread", agent, "echo", "--count", "12", "--interval", "0")
        client.popen.wait(30)
        backends = {json.loads(line).get("backend") for line in client.lines() if "{" in line}
        return backends == {"b1", "b2"}

    wait_for(both, 30, "calls to reach both endpoints", every=0.5)
    # The node ACKed what the control server sent, for every type it holds.
    status = status_json(control)
    node = next(n for n in status["nodes"] if n["node_id"] == "node-1")
    held = {t["type_url"]: t for t in node["types"] if t.get("version_sent")}
    assert held and all(t["version_sent"] == t.get("version_acked") for t in held.values()), held
    assert agent_status(agent).upstream == control
