"""Zone-aware routing end to end (gRFC A27/A56): one control server, an agent in zone ``a``
and one in zone ``b``, demo backends ``a1`` and ``a2`` in zone a and ``b1`` in zone b, and a
caller on each node (``tests.e2e.traffic_caller --steady`` on ``mesh_channel()``) calling
service ``zoned`` one call after another. Health checks run every 0.5 s (timeout 0.5 s,
unhealthy after 2 failures, healthy after 1); a backend reports NOT_SERVING on SIGUSR1 and
SERVING again on SIGUSR2 (it keeps answering calls either way)."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.conftest import Proc, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, meshctl, records, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

INTERVAL, TIMEOUT, UNHEALTHY_AFTER = 0.5, 0.5, 2
FAILOVER_BOUND = INTERVAL * UNHEALTHY_AFTER + TIMEOUT + 1.0  # the bound, 2.5 s
HEALTH = {
    "interval": f"{INTERVAL}s",
    "timeout": f"{TIMEOUT}s",
    "unhealthy_threshold": UNHEALTHY_AFTER,
    "healthy_threshold": 1,
}


@dataclass
class Zones:
    procs: MeshProcesses
    control: str
    agents: dict[str, str]
    backends: dict[str, tuple[Proc, str]]
    callers: dict[str, Proc]

    def address(self, backend: str) -> str:
        return self.backends[backend][1]

    def signal(self, sig: int, *backends: str) -> float:
        """Sends ``sig`` to ``backends``; returns the ``time.time()`` just before."""
        at = time.time()
        for name in backends:
            self.backends[name][0].popen.send_signal(sig)
        return at

    def apply(self, name: str, endpoints: list[tuple[str, str, int]], **policy: Any) -> None:
        document = {
            "name": name,
            "endpoints": [
                {"address": self.address(b), "zone": zone, "weight": weight}
                for b, zone, weight in endpoints
            ],
            "policy": {"health_check": HEALTH, **policy},
        }
        path = self.procs.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        meshctl(self.control, "apply", "-f", str(path))


ZONED = [("a1", "a", 1), ("a2", "a", 1), ("b1", "b", 1)]


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    procs = MeshProcesses(tmp_path_factory.mktemp("zones"))
    try:
        _, control = procs.start_control("--debounce", "0s")
        backends = {name: procs.start_backend(name) for name in ("a1", "a2", "b1")}
        mesh = Zones(procs, control, {}, backends, {})
        mesh.apply("zoned", ZONED)
        for zone in ("a", "b"):
            _, mesh.agents[zone] = procs.start_agent(control, f"node-{zone}", "--zone", zone)
            mesh.callers[zone] = procs.python(
                f"caller-{zone}",
                "tests.e2e.traffic_caller",
                "--agent",
                mesh.agents[zone],
                "--node-id",
                f"caller-{zone}",
                "--steady",
                "zoned",
                "--interval",
                "0.01",
            )
        for zone in ("a", "b"):
            wait_for(lambda z=zone: len(calls(mesh.callers[z])) >= 20, 30, f"calls in zone {zone}")
        yield mesh
    finally:
        procs.stop_all()


def calls(caller: Proc, since: float = 0.0) -> list[dict[str, Any]]:
    return [r for r in records(caller) if r.get("at", 0) > since]


def backends(records_: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(r.get("backend") or r.get("code") for r in records_)


def settled(caller: Proc, since: float, wanted: set[str], count: int = 20) -> float | None:
    """The reply time of the first call after ``since`` from which every call (``count``
    at least) went to ``wanted``; None while that is not so."""
    after = calls(caller, since)
    if len(after) < count:
        return None
    start = len(after)
    while start > 0 and after[start - 1].get("backend") in wanted:
        start -= 1
    if len(after) - start < count:
        return None
    at: float = after[start]["at"]
    return at


def test_calls_stay_in_their_own_zone(zones: Zones) -> None:
    now = time.time()
    wait_for(lambda: len(calls(zones.callers["a"], now)) >= 200, 30, "200 calls in zone a")
    wait_for(lambda: len(calls(zones.callers["b"], now)) >= 200, 30, "200 calls in zone b")
    in_a = backends(calls(zones.callers["a"], now))
    in_b = backends(calls(zones.callers["b"], now))
    assert set(in_a) == {"a1", "a2"}, in_a  # both of zone a's, nothing else
    assert set(in_b) == {"b1"}, in_b


def test_the_agents_and_meshctl_show_each_zones_priority(zones: Zones) -> None:
    status = agent_status(zones.agents["a"])
    assert status.zone == "a"
    assert {(p.zone, p.priority) for p in status.zone_priorities if p.service == "zoned"} == {
        ("a", 0),
        ("b", 1),
    }

    def shown() -> str | None:
        text = meshctl(zones.control, "status")
        return text if "node-b  b     zoned    b=0 a=1" in text else None

    text = wait_for(shown, 10, "meshctl status to show node-b's zones")
    assert "node-a  a     zoned    a=0 b=1" in text, text
    nodes = {n["node_id"]: n for n in status_json(zones.control)["nodes"]}
    reported = nodes["node-a"]["health"]["zone_priorities"]
    assert {(p["zone"], p["priority"]) for p in reported} == {("a", 0), ("b", 1)}


def test_a_failed_zone_fails_over_within_the_check_bound_and_comes_back(zones: Zones) -> None:
    caller = zones.callers["a"]
    failed_at = zones.signal(signal.SIGUSR1, "a1", "a2")  # zone a fails its health checks
    moved_at = wait_for(lambda: settled(caller, failed_at, {"b1"}), 20, "calls to move to b1")
    assert moved_at - failed_at <= FAILOVER_BOUND, (moved_at - failed_at, FAILOVER_BOUND)
    assert all(r["ok"] for r in calls(caller, failed_at)), "a call failed during the failover"
    # Zone b's caller never left its zone.
    assert set(backends(calls(zones.callers["b"], failed_at))) == {"b1"}
    served = {(p.zone, p.priority) for p in agent_status(zones.agents["a"]).zone_priorities}
    assert served == {("a", 0), ("b", 0)}, served  # zone a spilled over into b at priority 0

    recovered_at = zones.signal(signal.SIGUSR2, "a1", "a2")
    back_at = wait_for(lambda: settled(caller, recovered_at, {"a1", "a2"}), 20, "calls back")
    # One good check each brings them back (healthy_threshold 1): an interval, a check, a push.
    assert back_at - recovered_at <= INTERVAL * 1.1 + TIMEOUT + 1.0 + 1.0, back_at - recovered_at


def test_a_zone_half_down_spills_over_into_the_next(zones: Zones) -> None:
    caller = zones.callers["a"]
    failed_at = zones.signal(signal.SIGUSR1, "a1")  # 1 of 2 usable in zone a: below 70%
    try:
        wait_for(lambda: settled(caller, failed_at, {"a2", "b1"}), 20, "a1 to be left")
        since = time.time()
        wait_for(lambda: len(calls(caller, since)) >= 200, 30, "200 more calls")
        spread = backends(calls(caller, since))
        # Zone a (a2, weight 1 left) and zone b (b1, weight 1) share priority 0 by weight.
        assert set(spread) == {"a2", "b1"}, spread
        assert 0.3 <= spread["b1"] / sum(spread.values()) <= 0.7, spread
    finally:
        recovered_at = zones.signal(signal.SIGUSR2, "a1")
        wait_for(lambda: settled(caller, recovered_at, {"a1", "a2"}), 20, "calls back in zone a")


def test_a_zone_with_no_endpoints_fails_over_at_once(zones: Zones) -> None:
    caller = zones.callers["a"]
    applied_at = time.time()
    zones.apply("zoned", [("b1", "b", 1)])
    try:
        moved_at = wait_for(lambda: settled(caller, applied_at, {"b1"}), 20, "calls to b1")
        # No health check involved: the next push. Generous for a busy machine.
        assert moved_at - applied_at <= 2.0, moved_at - applied_at
        assert all(r["ok"] for r in calls(caller, applied_at))
    finally:
        restored_at = time.time()
        zones.apply("zoned", ZONED)
        wait_for(lambda: settled(caller, restored_at, {"a1", "a2"}), 20, "calls back in zone a")


def test_without_zone_preference_locality_weights_spread_the_calls(zones: Zones) -> None:
    # Zone a weighs 3 (a1 weight 3), zone b 1: calls from zone a go 75/25.
    zones.apply("spread", [("a1", "a", 3), ("b1", "b", 1)], locality={"prefer_own_zone": False})
    caller = zones.procs.python(
        "caller-spread",
        "tests.e2e.traffic_caller",
        "--agent",
        zones.agents["a"],
        "--node-id",
        "caller-spread",
        "--steady",
        "spread",
        "--interval",
        "0.002",
    )
    wait_for(lambda: len(calls(caller)) >= 800, 60, "800 calls to spread")
    spread = backends(calls(caller)[-800:])
    assert set(spread) == {"a1", "b1"}, spread
    assert abs(spread["a1"] / 800 - 0.75) <= 0.07, spread


def test_plain_grpcio_xds_clients_with_a_zone_stay_in_it(zones: Zones) -> None:
    """Any xDS client naming its zone in its bootstrap gets the priorities from the control
    server, without an agent."""
    caller = zones.procs.python(
        "raw-b",
        "tests.e2e.traffic_caller",
        "--xds-server",
        zones.control,
        "--zone",
        "b",
        "--node-id",
        "raw-b",
        "--steady",
        "zoned",
        "--interval",
        "0.005",
    )
    wait_for(lambda: len(calls(caller)) >= 100, 30, "100 calls straight to the control server")
    assert set(backends(calls(caller))) == {"b1"}
