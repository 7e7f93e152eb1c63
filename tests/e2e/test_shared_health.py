"""Health checks per target, end to end: a real agent checks the services of a control
server whose endpoints all sit on one real backend (``tests.e2e.health_backend``, which says
every Check it answers). The services that check the same (address, health service name)
share one check per interval, every one of them sees its result, and a service that checks
another health service name gets a check of its own. Interval 0.5 s, timeout 0.5 s,
unhealthy after 2 failures, healthy after 1."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.protobuf.duration_pb2 import Duration

from mesh.v1 import config_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT
from tests.conftest import Proc, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, apply

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

INTERVAL = 0.5
SHARING = [f"svc-{i}" for i in range(5)]
NAMED = "billing"
NAMED_CHECK = "billing.v1.Billing"
VERDICT_WITHIN = INTERVAL * 1.1 * 3 + 5.0  # two failures, a check in flight, a loaded box


def service(name: str, address: str, health_service: str = "") -> config_pb2.Service:
    return config_pb2.Service(
        name=name,
        endpoints=[config_pb2.Endpoint(address=address)],
        policy=config_pb2.Policy(
            health_check=config_pb2.HealthCheckPolicy(
                interval=Duration(nanos=int(INTERVAL * 1e9)),
                timeout=Duration(nanos=500_000_000),
                unhealthy_threshold=2,
                healthy_threshold=1,
                service_name=health_service,
            )
        ),
    )


@dataclass
class Mesh:
    procs: MeshProcesses
    control: str
    agent: str
    backend: Proc
    address: str

    def checks(self) -> list[str]:
        """The health service name of every Check the backend answered, in order."""
        return [json.loads(line)["check"] for line in self.backend.lines() if line]

    def states(self) -> dict[str, str]:
        """service -> its endpoint's state, as the agent's status shows it."""
        return {e.service: e.state for e in agent_status(self.agent).endpoint_health}

    def hold(self, *names: str) -> None:
        """Makes the agent hold ``names``: a local stream subscribes to their clusters and
        endpoints until the agent serves every one."""

        async def subscribe() -> None:
            async with AdsClient(self.agent, "local-caller", wait_for_ready=True) as client:
                client.subscribe(CLUSTER, list(names))
                client.subscribe(ENDPOINT, list(names))

                def held(c: AdsClient) -> bool:
                    got = c.of_type(ENDPOINT)
                    return bool(got) and len(got[-1].resources) == len(names)

                await client.wait_for(held, 20)

        asyncio.run(subscribe())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("shared-health"))
    try:
        _, control = procs.start_control("--debounce", "0s")
        backend, address = procs.start_ready(
            "backend", "tests.e2e.health_backend", "--serve", NAMED_CHECK
        )
        services = [service(name, address) for name in SHARING]
        asyncio.run(apply(control, *services, service(NAMED, address, NAMED_CHECK)))
        _, agent = procs.start_agent(control, "node-1")
        mesh = Mesh(procs, control, agent, backend, address)
        mesh.hold(*SHARING, NAMED)
        wanted = {name: "healthy" for name in [*SHARING, NAMED]}
        wait_for(lambda: mesh.states() == wanted, 20, lambda: f"all healthy: {mesh.states()}")
        yield mesh
    finally:
        procs.stop_all()


def checks_in(mesh: Mesh, window: float) -> dict[str, int]:
    """Checks the backend answered during the next ``window`` seconds, per health service
    name."""
    before = len(mesh.checks())
    time.sleep(window)
    counts: dict[str, int] = {}
    for name in mesh.checks()[before:]:
        counts[name] = counts.get(name, 0) + 1
    return counts


def per_interval_bounds(window: float) -> tuple[int, int]:
    """Fewest and most checks one loop makes in ``window``: rounds of the interval ±10%, each
    rounded up to a 50 ms tick, and a round in flight at each end."""
    return math.floor(window / (INTERVAL * 1.1 + 0.05)) - 1, math.ceil(
        window / (INTERVAL * 0.9)
    ) + 1


def test_services_on_one_target_share_one_check_and_another_name_gets_its_own(
    mesh: Mesh,
) -> None:
    window = 4.0
    fewest, most = per_interval_bounds(window)
    counts = checks_in(mesh, window)
    # 5 services share "": one check per interval, not 5.
    assert fewest <= counts.get("", 0) <= most, counts
    assert fewest <= counts.get(NAMED_CHECK, 0) <= most, counts
    assert set(counts) == {"", NAMED_CHECK}


def test_a_service_joining_a_shared_target_takes_its_results_without_a_second_check(
    mesh: Mesh,
) -> None:
    asyncio.run(apply(mesh.control, service("svc-late", mesh.address)))
    mesh.hold("svc-late")
    wait_for(
        lambda: mesh.states().get("svc-late") == "healthy",
        VERDICT_WITHIN,
        lambda: f"svc-late healthy: {mesh.states()}",
    )
    window = 3.0
    fewest, most = per_interval_bounds(window)
    assert fewest <= checks_in(mesh, window).get("", 0) <= most


def test_a_failing_backend_fails_every_sharing_service_and_its_recovery_reaches_all(
    mesh: Mesh,
) -> None:
    names = {e.service for e in agent_status(mesh.agent).endpoint_health}
    assert {*SHARING, NAMED} <= names
    mesh.backend.popen.send_signal(signal.SIGUSR1)
    try:
        wait_for(
            lambda: set(mesh.states().values()) == {"unhealthy"},
            VERDICT_WITHIN,
            lambda: f"every service's endpoint unhealthy: {mesh.states()}",
        )
        # One endpoint each, all failing: panic, so the checks are not applied.
        assert not any(e.applied for e in agent_status(mesh.agent).endpoint_health)
    finally:
        mesh.backend.popen.send_signal(signal.SIGUSR2)
    wait_for(
        lambda: set(mesh.states().values()) == {"healthy"},
        VERDICT_WITHIN,
        lambda: f"every service's endpoint healthy again: {mesh.states()}",
    )
    assert set(mesh.states()) == names
