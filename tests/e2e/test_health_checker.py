"""The agent's health checker against real in-process gRPC servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
import structlog
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.metrics import NoOpMeterProvider

from mesh.v1 import config_pb2
from mesh_agent.daemon.health.checker import HealthChecker
from mesh_agent.daemon.health.table import HealthPolicy
from mesh_agent.daemon.metrics import AgentMetrics
from tests.conftest import eventually

pytestmark = [pytest.mark.e2e]

INTERVAL = 0.1
THRESHOLD = 2
# Worst case to a verdict: the check in flight when the state flipped, then THRESHOLD more
# rounds of interval + 10% jitter; plus a margin for a loaded CI machine.
VERDICT_WITHIN = INTERVAL * 1.1 * (THRESHOLD + 1) + 1.0

POLICY = config_pb2.HealthCheckPolicy(
    interval=Duration(nanos=int(INTERVAL * 1e9)),
    timeout=Duration(nanos=500_000_000),
    unhealthy_threshold=THRESHOLD,
    healthy_threshold=THRESHOLD,
)


class CountingHealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The stock aio health servicer, counting the Check calls it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    async def Check(self, request: Any, context: Any) -> Any:
        self.checks += 1
        return await super().Check(request, context)


class Backend:
    """A real grpc.aio server with the standard health service, on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.server = grpc.aio.server()
        self.health = CountingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    async def start(self) -> Backend:
        await self.server.start()
        return self

    async def set(self, status: int, service: str = "") -> None:
        await self.health.set(service, status)

    async def stop(self) -> None:
        await self.server.stop(grace=None)


@pytest.mark.timeout(30)
async def test_not_serving_goes_unhealthy_and_comes_back() -> None:
    a, b = await Backend().start(), await Backend().start()
    checker = HealthChecker()
    table = checker.table
    try:
        with structlog.testing.capture_logs() as logs:
            checker.set_targets("orders", [a.address, b.address], POLICY)
            await checker.start()
            await eventually(
                lambda: table.statuses("orders") == {a.address: "healthy", b.address: "healthy"},
                VERDICT_WITHIN + 1.0,
                "both endpoints healthy",
            )
            assert table.overrides("orders") == {}

            await a.set(health_pb2.HealthCheckResponse.NOT_SERVING)
            await eventually(
                lambda: table.status("orders", a.address) == "unhealthy",
                VERDICT_WITHIN,
                "NOT_SERVING endpoint marked unhealthy",
            )
            assert table.overrides("orders") == {a.address: "unhealthy"}
            assert not table.in_panic("orders")
            assert table.status("orders", b.address) == "healthy"

            await a.set(health_pb2.HealthCheckResponse.SERVING)
            await eventually(
                lambda: table.status("orders", a.address) == "healthy",
                VERDICT_WITHIN,
                "endpoint healthy again once SERVING",
            )
            assert table.overrides("orders") == {}
    finally:
        await checker.stop()
        await a.stop()
        await b.stop()

    changes = [
        (e["address"], e["old"], e["new"])
        for e in logs
        if e["event"] == "endpoint health changed" and e["service"] == "orders"
    ]
    assert (a.address, "healthy", "unhealthy") in changes
    assert (a.address, "unhealthy", "healthy") in changes
    failed = [
        e for e in logs if e["event"] == "endpoint health changed" and e["new"] == "unhealthy"
    ]
    assert failed[0]["reason"] == "NOT_SERVING"


@pytest.mark.timeout(30)
async def test_stopped_server_goes_unhealthy_and_a_restarted_one_comes_back() -> None:
    a, b = await Backend().start(), await Backend().start()
    checker = HealthChecker()
    table = checker.table
    restarted: grpc.aio.Server | None = None
    try:
        checker.set_targets("orders", [a.address, b.address], POLICY)
        await checker.start()
        await eventually(
            lambda: table.status("orders", a.address) == "healthy",
            VERDICT_WITHIN + 1.0,
            "endpoint healthy",
        )
        await a.stop()  # nothing listens on the port any more
        await eventually(
            lambda: table.status("orders", a.address) == "unhealthy",
            VERDICT_WITHIN,
            "stopped endpoint marked unhealthy",
        )
        assert table.overrides("orders") == {a.address: "unhealthy"}

        # A new server on the same port: the channel reconnects within its 1s max backoff.
        restarted = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), restarted)
        if restarted.add_insecure_port(a.address) == 0:
            pytest.skip("port was taken by something else meanwhile")
        await restarted.start()
        await eventually(
            lambda: table.status("orders", a.address) == "healthy",
            VERDICT_WITHIN + 1.5,
            "restarted endpoint healthy again",
        )
    finally:
        await checker.stop()
        await a.stop()
        await b.stop()
        if restarted is not None:
            await restarted.stop(grace=None)


@pytest.mark.timeout(30)
async def test_never_listening_address_goes_unhealthy() -> None:
    gone = await Backend().start()
    dead_address = gone.address
    await gone.stop()
    live = await Backend().start()
    checker = HealthChecker()
    try:
        checker.set_targets("orders", [dead_address, live.address], POLICY)
        await checker.start()
        await eventually(
            lambda: checker.table.overrides("orders") == {dead_address: "unhealthy"},
            VERDICT_WITHIN + 1.0,
            "unreachable endpoint overridden as unhealthy",
        )
    finally:
        await checker.stop()
        await live.stop()


@pytest.mark.timeout(30)
async def test_all_endpoints_failing_is_panic_without_overrides() -> None:
    a, b = await Backend().start(), await Backend().start()
    checker = HealthChecker()
    table = checker.table
    try:
        with structlog.testing.capture_logs() as logs:
            checker.set_targets("orders", [a.address, b.address], POLICY)
            await checker.start()
            await a.set(health_pb2.HealthCheckResponse.NOT_SERVING)
            await b.set(health_pb2.HealthCheckResponse.NOT_SERVING)
            await eventually(
                lambda: (
                    table.statuses("orders") == {a.address: "unhealthy", b.address: "unhealthy"}
                ),
                VERDICT_WITHIN + 1.0,
                "both endpoints unhealthy",
            )
            assert table.in_panic("orders")
            assert table.overrides("orders") == {}

            await b.set(health_pb2.HealthCheckResponse.SERVING)
            await eventually(lambda: not table.in_panic("orders"), VERDICT_WITHIN, "panic over")
            assert table.overrides("orders") == {a.address: "unhealthy"}
    finally:
        await checker.stop()
        await a.stop()
        await b.stop()
    events = [e["event"] for e in logs]
    assert any(e.startswith("health panic:") for e in events)
    assert any(e.startswith("health panic over") for e in events)


@pytest.mark.timeout(30)
async def test_service_name_is_sent_and_unknown_service_fails() -> None:
    a = await Backend().start()
    await a.set(health_pb2.HealthCheckResponse.SERVING, service="orders.v1.Orders")
    checker = HealthChecker()
    table = checker.table
    named = config_pb2.HealthCheckPolicy()
    named.CopyFrom(POLICY)
    named.service_name = "orders.v1.Orders"
    unknown = config_pb2.HealthCheckPolicy()
    unknown.CopyFrom(POLICY)
    unknown.service_name = "nope.v1.Nope"
    try:
        checker.set_targets("orders", [a.address], named)
        checker.set_targets("other", [a.address], unknown)
        await checker.start()
        await eventually(
            lambda: (
                table.status("orders", a.address) == "healthy"
                and table.status("other", a.address) == "unhealthy"
            ),
            VERDICT_WITHIN + 1.0,
            "named service healthy, unknown service unhealthy",
        )
        # One channel serves both services' checks of the same address.
        assert checker.channels() == [a.address]
    finally:
        await checker.stop()
        await a.stop()


@pytest.mark.timeout(30)
async def test_targets_update_keeps_state_and_removed_endpoints_stop_being_checked() -> None:
    a, b, c = await Backend().start(), await Backend().start(), await Backend().start()
    checker = HealthChecker()
    table = checker.table
    try:
        await checker.start()  # targets may also arrive after start
        checker.set_targets("orders", [a.address, b.address, c.address], POLICY)
        await c.set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await eventually(
            lambda: (
                table.statuses("orders")
                == {a.address: "healthy", b.address: "healthy", c.address: "unhealthy"}
            ),
            VERDICT_WITHIN + 1.0,
            "initial verdicts",
        )
        checker.set_targets("orders", [a.address, c.address], POLICY)
        assert table.statuses("orders") == {a.address: "healthy", c.address: "unhealthy"}
        assert checker.targets() == {"orders": [a.address, c.address]}
        await asyncio.sleep(0.05)  # a check already on the wire may still land
        checks = b.health.checks
        await asyncio.sleep(INTERVAL * 4)
        assert b.health.checks == checks, "removed endpoint is still being checked"
        assert b.address not in checker.channels()

        checker.remove_service("orders")
        assert table.services() == []
        assert checker.targets() == {}
        assert checker.channels() == []
    finally:
        await checker.stop()
        for backend in (a, b, c):
            await backend.stop()


@pytest.mark.timeout(30)
async def test_check_timeout_is_a_failure() -> None:
    """A server that never answers: the policy's timeout turns each check into a failure."""

    class Hanging(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
        async def Check(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(10)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Hanging(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    policy = config_pb2.HealthCheckPolicy()
    policy.CopyFrom(POLICY)
    policy.timeout.CopyFrom(Duration(nanos=50_000_000))
    checker = HealthChecker()
    try:
        with structlog.testing.capture_logs() as logs:
            checker.set_targets("orders", [address], policy)
            await checker.start()
            await eventually(
                lambda: checker.table.status("orders", address) == "unhealthy",
                VERDICT_WITHIN + 1.0,
                "hanging endpoint unhealthy",
            )
    finally:
        await checker.stop()
        await server.stop(grace=None)
    changed = [e for e in logs if e["event"] == "endpoint health changed"]
    assert changed[0]["reason"].startswith(grpc.StatusCode.DEADLINE_EXCEEDED.name)


class FailingMetrics(AgentMetrics):
    """The agent's instruments (on a meter of their own) whose first ``failures`` counts of a
    health check raise: a bug in a check loop's round."""

    def __init__(self, failures: int) -> None:
        super().__init__(NoOpMeterProvider().get_meter("test"))
        self.failures = failures

    def health_check(self, service: str, address: str, ok: bool, duration: float) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("bug in a check")
        super().health_check(service, address, ok, duration)


@pytest.mark.timeout(30)
async def test_a_check_loop_survives_errors() -> None:
    a = await Backend().start()
    checker = HealthChecker(metrics=FailingMetrics(failures=3))
    try:
        with structlog.testing.capture_logs() as logs:
            checker.set_targets("orders", [a.address], POLICY)
            await checker.start()
            await eventually(
                lambda: checker.table.status("orders", a.address) == "healthy",
                VERDICT_WITHIN + INTERVAL * 1.1 * 3,
                "endpoint healthy after the loop's errors",
            )
    finally:
        await checker.stop()
        await a.stop()
    assert sum(e["event"] == "health check loop error" for e in logs) == 3


class SlowHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers SERVING after ``delay`` seconds, counting the calls."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.checks = 0

    async def Check(self, request: Any, context: Any) -> Any:
        self.checks += 1
        await asyncio.sleep(self.delay)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.timeout(30)
async def test_services_sharing_a_target_share_its_check_each_by_its_own_policy() -> None:
    """One loop for (address, ""): at the shortest interval, with the longest timeout; the
    service whose timeout the answer exceeds fails, the other passes; the slower service
    takes fewer results; a service leaving keeps the loop going for the others."""
    servicer = SlowHealth(delay=0.15)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    fast = HealthPolicy(interval=0.1, timeout=1.0, unhealthy_threshold=2, healthy_threshold=1)
    strict = HealthPolicy(interval=0.1, timeout=0.05, unhealthy_threshold=2)
    slow = HealthPolicy(interval=0.4, timeout=1.0, unhealthy_threshold=2, healthy_threshold=1)
    metrics = CountingMetrics()
    checker = HealthChecker(metrics=metrics)
    table = checker.table
    try:
        with structlog.testing.capture_logs() as logs:
            checker.set_targets("fast", [address], fast)
            checker.set_targets("strict", [address], strict)
            checker.set_targets("slow", [address], slow)
            await checker.start()
            assert checker.shared_targets() == {(address, ""): ["fast", "slow", "strict"]}
            await eventually(
                lambda: (
                    table.statuses("fast") == {address: "healthy"}
                    and table.statuses("slow") == {address: "healthy"}
                    and table.statuses("strict") == {address: "unhealthy"}
                ),
                VERDICT_WITHIN + 2.0,
                lambda: f"verdicts by each service's timeout: {table.statuses('strict')}",
            )
            taken = dict(metrics.taken)
            checks = checker.checks
            await asyncio.sleep(1.5)
            rounds = checker.checks - checks
            assert rounds >= 3
            fast_took = metrics.taken["fast"] - taken["fast"]
            slow_took = metrics.taken["slow"] - taken["slow"]
            assert abs(fast_took - rounds) <= 1  # fast takes every round
            # slow takes one result per ~80% of 0.4 s: well under every round.
            assert 1 <= slow_took < fast_took * 0.75, (slow_took, fast_took)
            assert servicer.checks - checker.checks in (0, 1)  # one may be in flight

            checker.remove_service("strict")
            checker.remove_service("fast")
            assert checker.shared_targets() == {(address, ""): ["slow"]}
            checks = checker.checks
            await eventually(lambda: checker.checks >= checks + 2, 3.0, "the loop goes on")
    finally:
        await checker.stop()
        await server.stop(grace=None)
    strict_fail = [
        e for e in logs if e["event"] == "endpoint health changed" and e["service"] == "strict"
    ]
    assert strict_fail[0]["reason"].startswith("DEADLINE_EXCEEDED: answered in")


class CountingMetrics(AgentMetrics):
    """The agent's instruments (on a meter of their own), counting the results each service
    takes."""

    def __init__(self) -> None:
        super().__init__(NoOpMeterProvider().get_meter("test"))
        self.taken: dict[str, int] = {}

    def health_check(self, service: str, address: str, ok: bool, duration: float) -> None:
        self.taken[service] = self.taken.get(service, 0) + 1
        super().health_check(service, address, ok, duration)


@pytest.mark.timeout(30)
async def test_a_service_changing_its_health_service_name_moves_to_that_target() -> None:
    a = await Backend().start()
    await a.set(health_pb2.HealthCheckResponse.SERVING, service="orders.v1.Orders")
    checker = HealthChecker()
    table = checker.table
    unknown = config_pb2.HealthCheckPolicy()
    unknown.CopyFrom(POLICY)
    unknown.service_name = "nope.v1.Nope"
    named = config_pb2.HealthCheckPolicy()
    named.CopyFrom(POLICY)
    named.service_name = "orders.v1.Orders"
    try:
        checker.set_targets("orders", [a.address], unknown)
        checker.set_targets("billing", [a.address], unknown)
        await checker.start()
        await eventually(
            lambda: table.status("orders", a.address) == "unhealthy",
            VERDICT_WITHIN + 1.0,
            "an unknown health service name fails",
        )
        checker.set_targets("orders", [a.address], named)
        assert checker.shared_targets() == {
            (a.address, "nope.v1.Nope"): ["billing"],
            (a.address, "orders.v1.Orders"): ["orders"],
        }
        await eventually(
            lambda: table.status("orders", a.address) == "healthy",
            VERDICT_WITHIN,
            "orders healthy once it checks its own name",
        )
        assert table.status("billing", a.address) == "unhealthy"
        checker.remove_service("billing")
        assert checker.shared_targets() == {(a.address, "orders.v1.Orders"): ["orders"]}
        assert checker.channels() == [a.address]
    finally:
        await checker.stop()
        await a.stop()
