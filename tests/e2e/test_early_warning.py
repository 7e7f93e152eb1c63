"""Early warnings with real processes: mesh-control, one agent, demo backends told what share
of calls to fail as time goes on, and a steady caller per service through ``mesh_channel()``.

Every service has the same breaker, on the failure rate only: ``failure_rate: 0.5`` over a
``10s`` window, ``min_requests: 20``, ``consecutive_failures: 0``, no ``slow_call``. Three
services run at once (one scenario, ~35 s):

- ``ramp-trend`` (no objective) and ``ramp-slo`` (``slo: {success: 99%}``): their backends'
  failure share rises from 0 to 60 % over 30 s. Each is marked degrading at least 5 s before
  its breaker opens (the warning's ``since`` against the breaker's transition time, both the
  agent's), and calls keep reaching the backend while it is degrading.
- ``steady`` (``slo: {success: 99%}``): its backend fails 1 % of calls throughout; it is never
  marked degrading.
"""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import (
    OPEN,
    agent_status,
    backend_calls,
    configure,
    json_node,
    log_lines,
    meshctl,
    records,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

BREAKER = (
    "circuit_breaker: {failure_rate: 0.5, window: 10s, min_requests: 20,"
    " consecutive_failures: 0, open_for: 60s}"
)
SLO = "slo: {success: 99%}"
RAMP_SECONDS = 30.0
RAMP_TOP = 0.6
LEAD = 5.0  # the warning must come at least this long before the breaker opens
CALL_INTERVAL = "0.04"  # each caller: ~25 calls a second


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Ramp(threading.Thread):
    """Tells the backends to fail a share of calls rising from 0 to RAMP_TOP over
    RAMP_SECONDS, four times a second, until stopped."""

    def __init__(self, backends: list[str]) -> None:
        super().__init__(daemon=True)
        self.backends = backends
        self.stop = threading.Event()
        self.started = time.time()

    def run(self) -> None:
        while not self.stop.is_set():
            elapsed = time.time() - self.started
            share = min(RAMP_TOP, RAMP_TOP * elapsed / RAMP_SECONDS)
            for backend in self.backends:
                configure(backend, fail="UNAVAILABLE", fail_share=share or 1e-9)
            self.stop.wait(0.25)


def test_warning_comes_before_the_breaker_and_not_for_a_steady_error_rate(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control()
    backends = {name: procs.start_backend(name)[1] for name in ("ramp-trend", "ramp-slo", "steady")}
    policies = {"ramp-trend": [BREAKER], "ramp-slo": [BREAKER, SLO], "steady": [BREAKER, SLO]}
    for name, lines in policies.items():
        path = tmp_path / f"{name}.yaml"
        body = "".join(f"  {line}\n" for line in lines)
        path.write_text(
            f"name: {name}\nendpoints: [{{address: '{backends[name]}'}}]\npolicy:\n{body}"
        )
        meshctl(control, "apply", "-f", str(path))
    agent_proc, agent = procs.start_agent(control, "node-1")
    configure(backends["steady"], fail="UNAVAILABLE", fail_share=0.01)
    callers = {
        name: procs.mesh_client(f"caller-{name}", agent, name, "--interval", CALL_INTERVAL)
        for name in backends
    }
    for name, caller in callers.items():
        wait_for(
            lambda caller=caller: sum(1 for r in records(caller) if r["ok"]) >= 20,
            30,
            f"{name}'s caller to get answers",
        )

    ramp = Ramp([backends["ramp-trend"], backends["ramp-slo"]])
    ramp.start()
    warned: dict[str, float] = {}  # service -> ServiceWarning.since
    reasons: dict[str, str] = {}
    calls_at_warning: dict[str, int] = {}
    try:
        deadline = ramp.started + RAMP_SECONDS + 20
        while time.time() < deadline:
            status = agent_status(agent)
            for warning in status.warnings:
                if warning.service not in warned:
                    warned[warning.service] = warning.since.ToNanoseconds() / 1e9
                    reasons[warning.service] = warning.reason
                    calls_at_warning[warning.service] = backend_calls(backends[warning.service])
                    assert warning.state == "degrading" and warning.detail
            opened = {b.service for b in status.breakers if b.state == OPEN}
            if {"ramp-trend", "ramp-slo"} <= opened:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"breakers did not both open; warnings: {warned}")
    finally:
        ramp.stop.set()
        ramp.join()

    logs = log_lines(agent_proc)
    opened_at = {
        line["service"]: _stamp(line["timestamp"])
        for line in logs
        if line["event"] == "circuit opened"
    }
    assert {"ramp-trend", "ramp-slo"} <= set(opened_at)
    assert "steady" not in warned, f"a steady 1% against 99% warned: {reasons}"
    assert "steady" not in opened_at
    assert reasons.get("ramp-trend") == "failure_rate_trend", reasons
    assert reasons.get("ramp-slo") == "error_budget_burn", reasons
    for service in ("ramp-trend", "ramp-slo"):
        lead = opened_at[service] - warned[service]
        print(
            f"{service}: warned {warned[service] - ramp.started:.1f}s into the ramp, "
            f"{lead:.1f}s before its breaker opened"
        )
        assert lead >= LEAD, f"{service} warned {lead:.1f}s before its breaker opened"
        raised = [
            line
            for line in logs
            if line["event"] == "service degrading" and line["service"] == service
        ]
        assert raised and raised[0]["reason"] == reasons[service]
        # The warning changed no routing: the backend kept answering while degrading.
        answered = [
            r
            for r in records(callers[service])
            if r["ok"] and warned[service] < float(r["t"]) < opened_at[service]
        ]
        assert len(answered) >= 20, f"{service}: {len(answered)} answers while degrading"
        assert backend_calls(backends[service]) > calls_at_warning[service]
    burn = next(w for w in agent_status(agent).warnings if w.service == "ramp-slo")
    assert min(burn.burn_short, burn.burn_long) >= 8  # raised at 10x, kept above 8x

    # The steady service did fail 1 % of its calls all along, through the mesh.
    steady = records(callers["steady"])
    failed = sum(1 for r in steady if not r["ok"])
    assert len(steady) >= 400 and 1 <= failed <= 0.03 * len(steady), (failed, len(steady))

    # mesh-control shows what the agent reported (warnings are kept while breakers are open).
    def reported() -> set[str] | None:
        health = json_node(control, "node-1").get("health", {})
        services = {w["service"] for w in health.get("warnings", [])}
        return services if {"ramp-trend", "ramp-slo"} <= services else None

    assert wait_for(reported, 15, "mesh-control to show the warnings") == {"ramp-trend", "ramp-slo"}
    table = meshctl(control, "status")
    assert "DEGRADING" in table and "error_budget_burn" in table
    assert "1 with degrading services" in table.splitlines()[-1]
