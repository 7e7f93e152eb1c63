"""The one admit/record core of the client library. The mesh channels
(:mod:`mesh_agent.client._sync_channel`, :mod:`mesh_agent.client._aio_channel`) and the
interceptors (:mod:`mesh_agent.client._interceptors`) all go through a :class:`Gate`, so a
call is decided, timed out, classified, reported and traced the same way whichever way it was
made.

Before a call, :meth:`Gate.admit` asks the node's breaker (:meth:`AgentLink.decide`, from
state the process already holds: no RPC) and works out the timeout to send: the earlier of the
caller's deadline and the service's policy timeout, or its route's when the service's routes
set their own (matched as grpcio's xDS client would, :mod:`mesh_core.routing`). grpcio would
apply a route timeout 1-2 s early from the route's ``max_stream_duration``
(grpc/grpc#40633), so ``mesh_channel()`` dials an alias Listener without it
(:mod:`mesh_core.names`) and the gate applies it instead. The :class:`Ticket` it hands back
says what to send; when the call ends, :meth:`Ticket.finish` classifies its status
(:mod:`mesh_agent.client._classify`), gives a backend's answer to the link (a tuple appended
to a deque; batches go to the agent from a background thread) and, when an OpenTelemetry
provider is installed, ends the call's span and records its duration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc
import grpc.aio
import structlog
from opentelemetry import metrics, trace

from mesh_agent.client._classify import counts_for_breaker
from mesh_agent.client._link import UNKNOWN, AgentLink, CallTimeout, Decision
from mesh_agent.client._rejection import rejection_details
from mesh_core.routing import Metadata, RouteTimeouts
from mesh_core.rpc_telemetry import CODE_NAMES, ClientRpcTelemetry, rpc_method, trace_headers

log = structlog.get_logger(__name__)

_OK = grpc.StatusCode.OK
# Module constants, not Decision.X: an enum member looked up on its class costs ~70 ns.
_PROBE = Decision.PROBE
_REJECT = Decision.REJECT
_LOOK_AGAIN = 1.0  # seconds between asking OpenTelemetry whether telemetry is installed
_T = TypeVar("_T")


def remaining(timeout: float | None, begun: float) -> float | None:
    """What is left of a timeout of the call that began at ``begun`` (``time.monotonic()``)."""
    return None if timeout is None else timeout - (time.monotonic() - begun)


def _for_call(policy: CallTimeout, method: str | bytes, metadata: Metadata | None) -> float | None:
    """The policy timeout of one call: its route's, when the service's routes set their own."""
    if type(policy) is RouteTimeouts:
        return policy.timeout_for(method, metadata)
    return policy  # type: ignore[return-value]


def _deadline(caller: float | None, policy: float | None, elapsed: float) -> float | None:
    """The timeout to send for a call made ``elapsed`` seconds ago: until the earlier of the
    caller's deadline and the policy's (both from when it was made); None if neither has one."""
    if policy is not None and (caller is None or policy < caller):
        caller = policy
    return None if caller is None else caller - elapsed


class Ticket:
    """One call through the gate: whether it was refused (``rejected``, until ``open_until``),
    else the timeout and metadata to send it with, and what to report when it ends. Made by
    :class:`Gate`; finished once, by whichever thread or callback sees the call end."""

    __slots__ = (
        "gate",
        "metadata",
        "method",
        "open_until",
        "probe",
        "rejected",
        "span",
        "started",
        "timeout",
    )

    def __init__(
        self,
        gate: Gate,
        timeout: float | None,
        metadata: Any,
        decision: Decision,
        open_until: float,
        started: float,
    ) -> None:
        self.gate = gate
        self.timeout = timeout
        self.metadata = metadata
        self.rejected = decision is _REJECT
        self.probe = decision is _PROBE
        self.open_until = open_until
        self.started = started  # time.perf_counter()
        self.method = ""  # set when there is telemetry to record
        self.span: trace.Span | None = None

    def finish(self, code: str, details: str | None) -> None:
        """The call ended with ``code`` (a ``grpc.StatusCode`` name): reported to the agent if
        a backend answered it, and to telemetry."""
        gate = self.gate
        if code == "OK" or counts_for_breaker(code, details):
            latency = time.perf_counter() - self.started
            gate.link.record(gate.service, code, latency, probe=self.probe)
        elif code == "PERMISSION_DENIED":
            gate.denied += 1  # refused by the service's authorization, not a backend failure
        if self.method:
            gate.telemetry.finish(self.span, self.method, self.started, code, details or "")

    def ok(self) -> None:
        """``finish("OK", "")``: the common case, with less to do."""
        gate = self.gate
        gate.link.record(gate.service, "OK", time.perf_counter() - self.started, probe=self.probe)
        if self.method:
            gate.telemetry.finish(self.span, self.method, self.started, "OK", "")

    def done(self, call: Any) -> None:
        """:meth:`finish` from a finished sync call: a done-callback for grpc's futures and
        streaming calls, or the ``grpc.RpcError`` a blocking call raised."""
        code = call.code()
        if code is _OK:
            self.ok()
        else:
            self.finish(CODE_NAMES[code] if code is not None else "CANCELLED", call.details())

    def aio_done(self, call: grpc.aio.Call) -> None:
        """:meth:`finish` from a finished ``grpc.aio`` call, as its done-callback. grpc.aio runs
        done-callbacks inside the call's completion, after it set the status: the status is
        read at once (see :func:`_at_once`, inlined here: it runs once per call), and nothing may
        be raised into grpc from here."""
        try:
            reading = call.code()
            try:
                reading.send(None)
            except StopIteration as read:
                code = read.value
            else:  # never seen: a call whose status is not there yet
                reading.close()
                _in_background(self._read_later(call))
                return
            if code is _OK:
                self.ok()
            else:
                self.finish(CODE_NAMES[code], _at_once(call.details()))
        except Exception:
            log.exception("recording a call's outcome failed", service=self.gate.service)

    async def _read_later(self, call: grpc.aio.Call) -> None:
        code = await call.code()
        self.finish(CODE_NAMES[code], await call.details())


def _at_once(coroutine: Coroutine[Any, Any, _T]) -> _T | None:
    """The value of ``coroutine`` if it finishes without waiting; None (and the coroutine
    closed) if it would wait. A finished ``grpc.aio`` call's ``code()`` and ``details()``
    finish at once, which lets its outcome be read in its done-callback with the call's
    public API and no task per call (a task costs more than the rest of the gate)."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    coroutine.close()
    return None


_background: set[asyncio.Task[None]] = set()


def _in_background(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)  # the loop keeps only a weak reference
    task.add_done_callback(_background.discard)


class Gate:
    """Admission and outcomes of the calls to one mesh service, on the process's
    :class:`AgentLink`. Thread-safe, like the link: it holds no per-call state."""

    def __init__(
        self,
        link: AgentLink,
        service: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.link = link
        self.service = service
        self.telemetry = ClientRpcTelemetry(service, tracer_provider, meter_provider)
        self.denied = 0
        """Calls the service's authorization refused (PERMISSION_DENIED): counted apart,
        never reported as the backend's failures (with metrics on, they are also in
        ``rpc.client.call.duration`` under their status code)."""
        # Whether telemetry is installed, asked again once a second (a provider installed
        # later is noticed within a second): three calls into OpenTelemetry's globals per
        # call would cost a third of the gate.
        self._observing = False
        self._look_at = 0.0  # time.perf_counter()
        link.watch(service)

    def admit(self, method: str | bytes, timeout: float | None, metadata: Any) -> Ticket:
        """The ticket of a call being made now. While the agent has not told the service's
        policy (the first calls), waits for it: bounded, see :meth:`AgentLink.call_timeout`."""
        policy = self.link.timeouts.get(self.service, UNKNOWN)
        if policy is UNKNOWN:
            begun = time.monotonic()
            policy = self.link.call_timeout(self.service, remaining(timeout, begun))
            return self._issue(policy, method, timeout, metadata, time.monotonic() - begun)
        return self._issue(policy, method, timeout, metadata)

    def admit_now(self, method: str | bytes, timeout: float | None, metadata: Any) -> Ticket | None:
        """:meth:`admit` if the agent has told the service's policy, else None (never waits:
        the caller waits with :meth:`admit_async`)."""
        link = self.link
        policy = link.timeouts.get(self.service, UNKNOWN)
        if policy is UNKNOWN:
            return None
        # _issue, inlined: this is every asyncio mesh channel call but the first few.
        if policy is not None:
            timeout = _deadline(timeout, _for_call(policy, method, metadata), 0.0)
        decision, open_until = link.decide(self.service)
        now = time.perf_counter()
        ticket = Ticket(self, timeout, metadata, decision, open_until, now)
        if now >= self._look_at:
            self._observing = self.telemetry.active()
            self._look_at = now + _LOOK_AGAIN
        if self._observing:
            self._observe(ticket, method, decision)
            ticket.started = time.perf_counter()
        return ticket

    async def admit_async(
        self, method: str | bytes, timeout: float | None, metadata: Any
    ) -> Ticket:
        """:meth:`admit` for asyncio: waits for the policy without blocking the loop."""
        policy = self.link.timeouts.get(self.service, UNKNOWN)
        if policy is UNKNOWN:
            begun = time.monotonic()
            limit = remaining(timeout, begun)
            policy = await self.link.call_timeout_async(self.service, limit)
            return self._issue(policy, method, timeout, metadata, time.monotonic() - begun)
        return self._issue(policy, method, timeout, metadata)

    def _issue(
        self,
        policy: CallTimeout,
        method: str | bytes,
        timeout: float | None,
        metadata: Any,
        elapsed: float = 0.0,
    ) -> Ticket:
        """The ticket of a call made ``elapsed`` seconds ago, with the policy in hand. The
        breaker is asked last, after any wait."""
        if policy is not None:
            timeout = _deadline(timeout, _for_call(policy, method, metadata), elapsed)
        decision, open_until = self.link.decide(self.service)
        now = time.perf_counter()
        ticket = Ticket(self, timeout, metadata, decision, open_until, now)
        if now >= self._look_at:
            self._observing = self.telemetry.active()
            self._look_at = now + _LOOK_AGAIN
        if self._observing:
            self._observe(ticket, method, decision)
            ticket.started = time.perf_counter()
        return ticket

    def _observe(self, ticket: Ticket, method: str | bytes, decision: Decision) -> None:
        """Telemetry is on: the call's span (its context added to the metadata to send, W3C
        by default), or a rejected call's span event. A call that never left the process is
        no RPC duration."""
        telemetry = self.telemetry
        ticket.method = rpc_method(method)
        if not telemetry.tracing():
            return
        span = telemetry.start(ticket.method, decision.value)
        if ticket.rejected:
            details = rejection_details(self.service, ticket.open_until)
            telemetry.rejected(span, details, ticket.open_until)
            return
        ticket.span = span
        ticket.metadata = (*(ticket.metadata or ()), *trace_headers(span))
