"""The client library's link to its agent, against a fake agent (an in-process gRPC server
at the one seam, ``mesh.v1.AgentService``): calls waiting for a service's call policy, and
the interceptors turning it into the call's deadline."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.v1 import agent_pb2, agent_pb2_grpc
from mesh_agent.client import _link
from mesh_agent.client._interceptors import (
    AioUnaryStreamInterceptor,
    MeshClientInterceptor,
    _CallDetails,
)
from mesh_agent.client._link import AgentLink, Decision
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)


def policy(service: str, seconds: float | None) -> agent_pb2.CallPolicy:
    message = agent_pb2.CallPolicy(service=service)
    if seconds is not None:
        message.timeout.FromNanoseconds(int(seconds * 1e9))
    return message


class FakeAgent(agent_pb2_grpc.AgentServiceServicer):
    """Answers a watch with breaker states only; call policies when the test pushes them."""

    def __init__(self) -> None:
        self.pushes: queue.Queue[agent_pb2.WatchBreakersResponse | None] = queue.Queue()
        self.watches = 0

    def push(self, *policies: agent_pb2.CallPolicy) -> None:
        self.pushes.put(agent_pb2.WatchBreakersResponse(call_policies=policies))

    def WatchBreakers(
        self, request: agent_pb2.WatchBreakersRequest, context: Any
    ) -> Iterator[agent_pb2.WatchBreakersResponse]:
        self.watches += 1
        yield agent_pb2.WatchBreakersResponse(
            breakers=[
                agent_pb2.BreakerStatus(service=s, state=agent_pb2.BREAKER_STATE_CLOSED)
                for s in request.services
            ]
        )
        while context.is_active():
            try:
                update = self.pushes.get(timeout=0.05)
            except queue.Empty:
                continue
            if update is None:
                return
            yield update

    def ReportOutcomes(self, request_iterator: Any, context: Any) -> Any:
        for _ in request_iterator:
            pass
        return agent_pb2.ReportOutcomesResponse()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[FakeAgent, str]]:
    fake = FakeAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(fake, server)
    target = f"unix:{tmp_path / 'agent.sock'}"
    server.add_insecure_port(target)
    server.start()
    try:
        yield fake, target
    finally:
        fake.pushes.put(None)
        server.stop(None)


@pytest.fixture
def link(agent: tuple[FakeAgent, str]) -> Iterator[AgentLink]:
    made = AgentLink(agent[1])
    try:
        yield made
    finally:
        made.close()


def later(seconds: float, action: Any) -> None:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def test_a_call_waits_for_the_policy_the_agent_has_not_told_yet(
    agent: tuple[FakeAgent, str], link: AgentLink
) -> None:
    fake, _ = agent
    link.watch("orders")
    later(0.3, lambda: fake.push(policy("orders", 3.0)))
    started = time.monotonic()
    assert link.call_timeout("orders") == 3.0
    waited = time.monotonic() - started
    assert 0.25 <= waited < 0.9, waited
    # Known now: no more waiting, and a change reaches the link.
    started = time.monotonic()
    assert link.call_timeout("orders") == 3.0
    assert time.monotonic() - started < 0.01
    fake.push(policy("orders", None))
    wait_for(
        lambda: link.timeouts.get("orders", _link.UNKNOWN) is None,
        5,
        lambda: f"the policy without a timeout at the link: {link.timeouts}",
        every=0.01,
    )


def test_the_wait_is_bounded_when_the_agent_never_learns_the_service(
    agent: tuple[FakeAgent, str],
) -> None:
    fake, target = agent
    link = AgentLink(target, policy_wait=0.4)
    try:
        started = time.monotonic()
        assert link.call_timeout("ghost") is None
        waited = time.monotonic() - started
        assert 0.35 <= waited < 0.8, waited
        assert fake.watches >= 1  # asking watched it
        # The bound is per service, from the first call that waited: later calls go at once.
        started = time.monotonic()
        assert link.call_timeout("ghost") is None
        assert time.monotonic() - started < 0.05
        # A caller's shorter deadline bounds the wait too.
        started = time.monotonic()
        assert link.call_timeout("other", limit=0.1) is None
        assert time.monotonic() - started < 0.3
        # Told later, the policy is used from then on.
        fake.push(policy("ghost", 1.5))
        wait_for(
            lambda: link.timeouts.get("ghost") == 1.5,
            5,
            lambda: f"ghost's timeout at the link: {link.timeouts}",
            every=0.01,
        )
        assert link.call_timeout("ghost") == 1.5
    finally:
        link.close()


def test_an_unreachable_agent_holds_no_call(tmp_path: Path) -> None:
    link = AgentLink(f"unix:{tmp_path / 'nobody.sock'}")
    try:
        started = time.monotonic()
        assert link.call_timeout("orders") is None
        assert time.monotonic() - started < 0.5  # POLICY_WAIT is 1 s: it failed open first
        started = time.monotonic()
        assert link.call_timeout("users") is None
        assert time.monotonic() - started < 0.05
    finally:
        link.close()


async def test_asyncio_calls_wait_without_blocking_the_loop(
    agent: tuple[FakeAgent, str], link: AgentLink
) -> None:
    fake, _ = agent
    link.watch("orders")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    later(0.3, lambda: fake.push(policy("orders", 2.5)))
    started = time.monotonic()
    assert await link.call_timeout_async("orders") == 2.5
    assert 0.25 <= time.monotonic() - started < 0.9
    assert ticks >= 10, ticks  # the loop ran meanwhile
    tick_task.cancel()


# -- the interceptors, with a fake link ---------------------------------------------------------


class FakeLink:
    def __init__(self, timeouts: dict[str, float | None]) -> None:
        self.timeouts = timeouts
        self.recorded: list[tuple[str, str]] = []

    def watch(self, service: str) -> None:
        pass

    def decide(self, service: str) -> tuple[Decision, float]:
        return Decision.ADMIT, 0.0

    def call_timeout(self, service: str, limit: float | None = None) -> float | None:
        return 3.0

    async def call_timeout_async(self, service: str, limit: float | None = None) -> float | None:
        return 3.0

    def record(self, service: str, code: str, latency: float, *, probe: bool = False) -> None:
        self.recorded.append((service, code))


class FakeCall:
    def add_done_callback(self, callback: Any) -> None:
        pass


def sent_details(link: FakeLink, details: Any) -> Any:
    seen: list[Any] = []

    def continuation(sent: Any, request: Any) -> FakeCall:
        seen.append(sent)
        return FakeCall()

    interceptor = MeshClientInterceptor(link, "orders")  # type: ignore[arg-type]
    interceptor.intercept_unary_unary(continuation, details, object())
    return seen[0]


CREDENTIALS = object()
DETAILS = _CallDetails(
    "/mesh.demo.v1.EchoService/Echo",
    10.0,
    [("k", "v")],
    CREDENTIALS,
    True,
    grpc.Compression.Gzip,
)


def test_the_sync_interceptor_sends_the_earlier_deadline() -> None:
    for timeouts, caller, expected in [
        ({"orders": 3.0}, 10.0, 3.0),  # the policy's deadline comes first
        ({"orders": 3.0}, 1.0, 1.0),  # the caller's does
        ({"orders": 3.0}, None, 3.0),  # the caller has none
        ({}, 10.0, 3.0),  # not told yet: waited for (call_timeout), then applied
    ]:
        sent = sent_details(FakeLink(timeouts), DETAILS._replace(timeout=caller))
        assert expected - 0.05 < sent.timeout <= expected, (timeouts, caller)
        assert (sent.method, sent.metadata, sent.credentials) == (
            DETAILS.method,
            DETAILS.metadata,
            CREDENTIALS,
        )
        assert sent.wait_for_ready is True and sent.compression is grpc.Compression.Gzip
    # Without a policy timeout the details pass untouched (the fast path builds nothing).
    assert sent_details(FakeLink({"orders": None}), DETAILS) is DETAILS


async def test_the_asyncio_interceptor_sends_the_earlier_deadline() -> None:
    seen: list[Any] = []

    async def continuation(sent: Any, request: Any) -> FakeCall:
        seen.append(sent)
        return FakeCall()

    details = grpc.aio.ClientCallDetails(
        "/mesh.demo.v1.EchoService/EchoStream", 10.0, grpc.aio.Metadata(("k", "v")), None, True
    )
    for timeouts, expected in (({"orders": 2.0}, 2.0), ({}, 3.0)):
        link = FakeLink(timeouts)
        interceptor = AioUnaryStreamInterceptor(link, "orders")  # type: ignore[arg-type]
        await interceptor.intercept_unary_stream(continuation, details, object())
        sent = seen.pop()
        assert expected - 0.05 < sent.timeout <= expected
        assert sent.metadata == details.metadata and sent.wait_for_ready is True
    link = FakeLink({"orders": None})
    interceptor = AioUnaryStreamInterceptor(link, "orders")  # type: ignore[arg-type]
    await interceptor.intercept_unary_stream(continuation, details, object())
    assert seen.pop() is details
