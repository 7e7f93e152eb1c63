"""Traffic rules end to end (gRFC A28, A33): one control server, one agent and two demo
backends, ``v1-a`` (labels ``version: v1``) and ``v2-a`` (``version: v2``), shared by every test
of the module; the services of :data:`SERVICES` are applied once with ``meshctl apply -f``.
Calls are made by ``tests.e2e.traffic_caller`` processes on ``mesh_channel()`` through the agent
(and once on grpcio's plain ``xds:///`` channels straight to the control server); a reply's
``backend`` names the backend, so the subset, that served it.

What grpcio (1.85) does with faults, as these tests show: an injected abort fails the call
with the configured code and the details ``Fault injected``; both aborts and delays reach a
client interceptor as ordinary outcomes (the same code and details, the delay inside the
call's duration). ``max_active_faults`` is honoured, and process-wide: C-core counts active
faults in one global counter (``g_active_faults`` in fault_injection_filter.cc), and a call
past the limit goes on without its fault.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from mesh.v1 import agent_pb2
from tests.conftest import Proc, wait_for
from tests.e2e.commands import Commands
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import breaker, meshctl, records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ECHO = "/mesh.demo.v1.EchoService/Echo"
V1, V2 = "v1-a", "v2-a"
FAULT_DETAILS = "Fault injected"
SUBSETS = [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]
TO_V1, TO_V2 = {"v1": 100}, {"v2": 100}


def header_route(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "match": {"headers": {name: match}}, "to": TO_V2}


# Each service's routes (the default route, last, sends every other call to v1).
SERVICES: dict[str, list[dict[str, Any]]] = {
    "split": [{"to": {"v1": 90, "v2": 10}}],
    "shift": [{"to": {"v1": 90, "v2": 10}}],
    "method": [
        # A route on a method nobody calls, first: it must catch no call.
        {"match": {"method": "/mesh.demo.v1.EchoService/Missing"}, "to": TO_V1},
        {"match": {"method": ECHO}, "to": TO_V2},
        {"to": TO_V1},
    ],
    "prefix": [
        # "/mesh.demo.v1.Echo/*" is the service mesh.demo.v1.Echo, not a string prefix.
        {"match": {"method": "/mesh.demo.v1.Echo/*"}, "to": TO_V1},
        {"match": {"method": "/mesh.demo.v1.EchoService/*"}, "to": TO_V2},
        {"to": TO_V1},
    ],
    "headers": [
        header_route("x-exact", {"exact": "yes"}),
        header_route("x-prefix", {"prefix": "can"}),
        header_route("x-regex", {"regex": "v[0-9]+(\\.[0-9]+)?"}),
        header_route("x-present", {"present": True}),
        header_route("x-invert", {"exact": "yes", "invert": True}),
        {"to": TO_V1},
    ],
    "absent": [header_route("x-absent", {"present": False}), {"to": TO_V1}],
    "order": [
        {"name": "first", "match": {"headers": {"x-a": {"exact": "1"}}}, "to": TO_V1},
        {"name": "second", "match": {"headers": {"x-b": {"exact": "1"}}}, "to": TO_V2},
        {"to": TO_V1},
    ],
    "abort": [{"to": TO_V1, "fault": {"abort": {"status": "UNAVAILABLE", "percent": 20}}}],
    "exhausted": [{"fault": {"abort": {"status": "RESOURCE_EXHAUSTED", "percent": 50}}}],
    "delay": [
        {
            "match": {"headers": {"x-fault": {"present": True}}},
            "to": TO_V1,
            "fault": {"delay": {"fixed": "200ms", "percent": 100}},
        },
        {"to": TO_V1},
    ],
    "half-delay": [{"to": TO_V1, "fault": {"delay": {"fixed": "200ms", "percent": 50}}}],
    "one-fault": [
        {
            "to": TO_V1,
            "fault": {"delay": {"fixed": "500ms", "percent": 100}, "max_active_faults": 1},
        }
    ],
}


# A service with a breaker (three failures in a row open it) and a route that aborts every
# call: injected aborts are not the backend's failures, so they must never open it.
GUARDED = "guarded"
SERVICES[GUARDED] = [
    {
        "match": {"headers": {"x-fault": {"present": True}}},
        "to": TO_V1,
        "fault": {"abort": {"status": "UNAVAILABLE", "percent": 100}},
    },
    {"to": TO_V1},
]
POLICIES = {GUARDED: {"circuit_breaker": {"consecutive_failures": 3, "open_for": "30s"}}}


def document(name: str, routes: list[dict[str, Any]], v1: str, v2: str) -> dict[str, Any]:
    return {
        "name": name,
        "endpoints": [
            {"address": v1, "labels": {"version": "v1"}},
            {"address": v2, "labels": {"version": "v2"}},
        ],
        "subsets": SUBSETS,
        "routes": routes,
        **({"policy": POLICIES[name]} if name in POLICIES else {}),
    }


class Caller:
    """A ``traffic_caller --commands DIR`` process: :meth:`calls` hands it a batch and waits
    for the calls' records."""

    def __init__(self, procs: MeshProcesses, name: str, *target: str) -> None:
        self.directory = procs.workdir / f"{name}-commands"
        self.directory.mkdir()
        self.proc = procs.python(
            name,
            "tests.e2e.traffic_caller",
            *target,
            "--node-id",
            name,
            "--commands",
            str(self.directory),
        )
        self.commands = Commands(self.directory, self.proc)

    def calls(
        self,
        service: str,
        count: int,
        *,
        concurrency: int = 10,
        metadata: dict[str, str] | None = None,
        method: str = "Echo",
        timeout: float = 5.0,
        within: float = 60,
    ) -> list[dict[str, Any]]:
        command = {
            "service": service,
            "count": count,
            "concurrency": concurrency,
            "metadata": sorted((metadata or {}).items()),
            "method": method,
            "timeout": timeout,
        }
        what = f"{count} calls to {service} by {self.proc.name}"
        result: list[dict[str, Any]] = self.commands.run(command, within, what)["records"]
        return result

    def backends(self, service: str, count: int = 3, **kw: Any) -> collections.Counter[str]:
        """Which backends answered ``count`` calls; every call must succeed."""
        calls = self.calls(service, count, **kw)
        failed = [c for c in calls if c["code"] != "OK"]
        assert not failed, failed
        return collections.Counter(c["backend"] for c in calls)


@dataclass
class Mesh:
    procs: MeshProcesses
    control: str
    agent: str
    v1: str
    v2: str
    caller: Caller

    def apply(self, name: str, routes: list[dict[str, Any]]) -> None:
        path = self.procs.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document(name, routes, self.v1, self.v2)))
        meshctl(self.control, "apply", "-f", str(path))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("traffic"))
    try:
        _, control = procs.start_control()
        _, v1 = procs.start_backend(V1)
        _, v2 = procs.start_backend(V2)
        path = procs.workdir / "services.yaml"
        documents = [document(name, routes, v1, v2) for name, routes in SERVICES.items()]
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        meshctl(control, "apply", "-f", str(path))
        _, agent = procs.start_agent(control, "node-1")
        caller = Caller(procs, "caller", "--agent", agent)
        yield Mesh(procs, control, agent, v1, v2, caller)
    finally:
        procs.stop_all()


def share(counts: collections.Counter[str], backend: str) -> float:
    return counts[backend] / sum(counts.values())


# -- splits ------------------------------------------------------------------------------------


def test_a_90_10_split_sends_2000_calls_within_3_points_of_the_weights(mesh: Mesh) -> None:
    counts = mesh.caller.backends("split", 2000)
    assert sum(counts.values()) == 2000 and set(counts) == {V1, V2}, counts
    assert abs(share(counts, V1) - 0.90) <= 0.03, counts
    assert abs(share(counts, V2) - 0.10) <= 0.03, counts


def test_plain_grpcio_xds_clients_split_alike_without_the_agent(mesh: Mesh) -> None:
    raw = Caller(mesh.procs, "raw-caller", "--xds-server", mesh.control)
    counts = raw.backends("split", 2000)
    assert sum(counts.values()) == 2000 and set(counts) == {V1, V2}, counts
    assert abs(share(counts, V2) - 0.10) <= 0.03, counts


def _since(steady: Proc, start: int) -> list[dict[str, Any]]:
    return records(steady)[start:]


def test_shifting_the_split_under_steady_traffic_fails_no_call(mesh: Mesh) -> None:
    steady = mesh.procs.python(
        "steady", "tests.e2e.traffic_caller", "--agent", mesh.agent, "--node-id", "steady",
        "--steady", "shift", "--timeout", "5",
    )  # fmt: skip
    try:
        # 90/10 (applied with the module's services): both subsets answer, v1 the most.
        calls = wait_for(
            lambda: len(records(steady)) >= 400 and records(steady), 60, "400 steady calls"
        )
        first = collections.Counter(c.get("backend") for c in calls[:400])
        assert 0.03 <= share(first, V2) <= 0.20 and share(first, V1) >= 0.80, first

        # 50/50: once applied, a window of 200 calls made after it shows an even mix.
        mark = len(records(steady))
        mesh.apply("shift", [{"to": {"v1": 50, "v2": 50}}])

        def even() -> bool:
            window = collections.Counter(c.get("backend") for c in _since(steady, mark)[-200:])
            return sum(window.values()) == 200 and 0.35 <= share(window, V2) <= 0.65

        wait_for(even, 30, lambda: f"an even mix: {_since(steady, mark)[-200:]}")

        # 0/100: the last 200 calls all went to v2.
        mark = len(records(steady))
        mesh.apply("shift", [{"to": {"v1": 0, "v2": 100}}])

        def all_v2() -> bool:
            window = [c.get("backend") for c in _since(steady, mark)[-200:]]
            return len(window) == 200 and set(window) == {V2}

        wait_for(all_v2, 30, lambda: f"only v2: {_since(steady, mark)[-200:]}")
    finally:
        steady.stop()
    calls = records(steady)
    failed = [c for c in calls if not c["ok"]]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:5]}"
    assert len(calls) >= 800, len(calls)


# -- request routing ---------------------------------------------------------------------------


def test_routes_match_methods_exactly_or_by_service(mesh: Mesh) -> None:
    caller = mesh.caller
    # Echo takes its own route (to v2), not the route on a method nobody calls (to v1);
    # EchoStream matches neither, so the default route takes it.
    assert caller.backends("method", 20) == {V2: 20}
    assert caller.backends("method", 3, method="EchoStream") == {V1: 3}
    # Every method of mesh.demo.v1.EchoService takes the service's route.
    assert caller.backends("prefix", 20) == {V2: 20}
    assert caller.backends("prefix", 3, method="EchoStream") == {V2: 3}


@pytest.mark.parametrize(
    ("header", "matching", "other"),
    [
        ("x-exact", "yes", "yess"),
        ("x-prefix", "canary-7", "a-canary"),
        ("x-regex", "v12.3", "v12.3-rc"),  # RE2 matches the whole value
        ("x-present", "", None),
        ("x-invert", "no", "yes"),
    ],
)
def test_header_matches_send_matching_calls_to_their_route(
    mesh: Mesh, header: str, matching: str, other: str | None
) -> None:
    caller = mesh.caller
    assert caller.backends("headers", 10, metadata={header: matching}) == {V2: 10}
    if other is not None:
        assert caller.backends("headers", 10, metadata={header: other}) == {V1: 10}
    # Without the header: the default route (an inverted value test needs the header too).
    assert caller.backends("headers", 10) == {V1: 10}
    assert caller.backends("headers", 10, metadata={"x-unrelated": matching or "x"}) == {V1: 10}


def test_an_absent_match_takes_calls_without_the_header(mesh: Mesh) -> None:
    assert mesh.caller.backends("absent", 10) == {V2: 10}
    assert mesh.caller.backends("absent", 10, metadata={"x-absent": "1"}) == {V1: 10}
    assert mesh.caller.backends("absent", 10, metadata={"x-absent": ""}) == {V1: 10}


def test_the_first_matching_route_wins(mesh: Mesh) -> None:
    caller = mesh.caller
    assert caller.backends("order", 10, metadata={"x-b": "1"}) == {V2: 10}  # second
    assert caller.backends("order", 10, metadata={"x-a": "1", "x-b": "1"}) == {V1: 10}  # first
    assert caller.backends("order", 10, metadata={"x-a": "1"}) == {V1: 10}


# -- fault injection ---------------------------------------------------------------------------


def _observed_alike(calls: list[dict[str, Any]]) -> None:
    """A client interceptor saw each call end as the caller did."""
    for call in calls:
        seen = call["seen"]
        assert seen is not None, call
        assert (seen["code"], seen["details"]) == (call["code"], call["details"]), call


def test_an_injected_abort_fails_20_percent_of_calls_with_its_code(mesh: Mesh) -> None:
    calls = mesh.caller.calls("abort", 1000)
    aborted = [c for c in calls if c["code"] != "OK"]
    assert 160 <= len(aborted) <= 240, len(aborted)
    assert {(c["code"], c["details"]) for c in aborted} == {("UNAVAILABLE", FAULT_DETAILS)}
    assert {c["backend"] for c in calls if c["code"] == "OK"} == {V1}
    _observed_alike(calls)

    calls = mesh.caller.calls("exhausted", 200)
    aborted = [c for c in calls if c["code"] != "OK"]
    assert 60 <= len(aborted) <= 140, len(aborted)
    assert {(c["code"], c["details"]) for c in aborted} == {("RESOURCE_EXHAUSTED", FAULT_DETAILS)}
    _observed_alike(calls)


def test_an_injected_delay_holds_each_call_while_other_calls_go_at_once(mesh: Mesh) -> None:
    caller = mesh.caller
    fast = caller.calls("delay", 50)
    delayed = caller.calls("delay", 50, metadata={"x-fault": "1"})
    for call in fast + delayed:
        assert call["code"] == "OK" and call["backend"] == V1, call
    assert all(c["ms"] >= 200 for c in delayed), sorted(c["ms"] for c in delayed)[:5]
    # The interceptor's own measure includes the delay too.
    assert all(c["seen"]["ms"] >= 200 for c in delayed), delayed[:5]
    _observed_alike(fast + delayed)
    assert statistics.median(c["ms"] for c in fast) < 50, sorted(c["ms"] for c in fast)
    assert sum(c["ms"] < 150 for c in fast) >= 45, sorted(c["ms"] for c in fast)

    half = caller.calls("half-delay", 100)
    assert all(c["code"] == "OK" for c in half), half
    slow = sum(c["ms"] >= 200 for c in half)
    assert 25 <= slow <= 75, sorted(c["ms"] for c in half)


def test_max_active_faults_delays_one_call_at_a_time(mesh: Mesh) -> None:
    # grpcio counts active faults process-wide; each batch of 5 calls made together gets one
    # delayed call (it holds the only fault while it waits) and four that go at once.
    for _ in range(3):
        batch = mesh.caller.calls("one-fault", 5, concurrency=5)
        assert all(c["code"] == "OK" for c in batch), batch
        times = sorted(c["ms"] for c in batch)
        assert times[-1] >= 500, times
        assert sum(t >= 500 for t in times) == 1, times
        assert times[-2] < 400, times
    started = time.perf_counter()
    alone = mesh.caller.calls("one-fault", 3, concurrency=1)
    assert all(c["ms"] >= 500 for c in alone), alone  # one at a time, each is delayed
    assert time.perf_counter() - started >= 1.5


def test_injected_aborts_do_not_open_the_services_breaker(mesh: Mesh) -> None:
    calls = mesh.caller.calls(GUARDED, 20, concurrency=1, metadata={"x-fault": "1"})
    assert {(c["code"], c["details"]) for c in calls} == {("UNAVAILABLE", FAULT_DETAILS)}
    # Reported failures reach the agent within milliseconds (and three would open it): for
    # well over that, it stays closed, and calls without the fault go through.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        status = breaker(mesh.agent, GUARDED)
        assert status is not None and status.enabled, status
        assert status.state == agent_pb2.BREAKER_STATE_CLOSED, status
        time.sleep(0.1)
    assert mesh.caller.backends(GUARDED, 20, concurrency=1) == {V1: 20}
