"""The node agent's active health checker: ``grpc.health.v1.Health/Check`` against every
endpoint the agent serves, fed into a :class:`~mesh_agent.daemon.health.table.HealthTable`.

The checker is transport only (DESIGN decision 5). Checks are made per *target*, a
(address, health service name) pair, not per (service, endpoint): the services whose
endpoints share a target share one check loop, and each result is fanned out to every
(service, address) that subscribes to the target, so 1,000 services on the same 2 backends
cost 2 checks per interval, not 2,000. Every target of one address goes over one grpc.aio
channel, kept for as long as a target of that address is checked.

When the services sharing a target ask for different parameters:

- the check runs at the *shortest* interval among them and waits for the *longest* timeout;
- each service judges each result by its own timeout (an answer slower than it counts as a
  failure for that service only) and its own thresholds (the table's per-service state);
- a service takes a result at most once per 80% of its own interval, so its thresholds keep
  the meaning they have on their own ("3 failures" spans about 3 of its intervals, not 3 of
  a faster neighbour's).

Adding or removing a service that shares a target never restarts the target's loop; a new
subscriber takes the next result, and a changed interval or timeout applies from the next
round. A target's loop ends only when its last subscriber goes.

Wake-ups are rounded up to a tick (:data:`TICK`, or a tenth of the interval if shorter):
the loops whose checks fall in one tick wake together, in one turn of the event loop,
which costs a fraction of waking once per check (the jitter still spreads checks over the
interval, at the tick's granularity).

Ownership: a :class:`HealthChecker` and its table belong to the agent's asyncio event loop;
call every method from that loop.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.v1 import config_pb2
from mesh_agent.daemon.health.table import HealthPolicy, HealthTable, Placement
from mesh_agent.daemon.metrics import AgentMetrics, agent_metrics
from mesh_core.policy import SPILL_OVER_BELOW

log = structlog.get_logger(__name__)

JITTER: Final = 0.1
"""Each wait between checks is the interval ±10%, so checks of many targets spread out."""
FIRST_CHECK_MAX_DELAY: Final = 1.0
"""The first check of a new target runs after a random delay of at most this (or the
interval, if shorter)."""
TICK: Final = 0.25
"""Check loops wake on multiples of this many seconds (of a tenth of the interval, if
shorter), so that checks due close together run in one wake-up."""
TAKE_EVERY: Final = 1.0 - 2 * JITTER
"""A subscriber takes a result when this share of its own interval has passed since the
last one it took: every round at an equal interval, even with the jitter."""

DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    # Reconnect quickly, so an endpoint that comes back is seen within an interval or two.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Health checks must not share a subchannel pool with anything else in the process.
    ("grpc.use_local_subchannel_pool", 1),
)

TargetKey = tuple[str, str]
"""What one check loop checks: (address, health service name)."""


@dataclass(eq=False, slots=True)
class _Subscriber:
    service: str
    address: str
    policy: HealthPolicy
    next_due: float = 0.0  # event-loop time from which it takes the next result


@dataclass(eq=False)
class _Target:
    """One check loop and the subscribers it fans its results out to."""

    key: TargetKey
    subscribers: dict[str, _Subscriber] = field(default_factory=dict)  # by service
    task: asyncio.Task[None] | None = None
    retimed: bool = False  # False: a subscriber came, went or changed its policy
    _interval: float = 0.0
    _timeout: float = 0.0

    @property
    def address(self) -> str:
        return self.key[0]

    @property
    def service_name(self) -> str:
        return self.key[1]

    @property
    def interval(self) -> float:
        """The shortest interval of the subscribers."""
        self._retime()
        return self._interval

    @property
    def timeout(self) -> float:
        """The longest timeout of the subscribers."""
        self._retime()
        return self._timeout

    def _retime(self) -> None:
        # Computed when the loop next reads it, not at every change: a config change
        # touches every service sharing the target.
        if self.retimed:
            return
        policies = [s.policy for s in self.subscribers.values()]
        self._interval = min(p.interval for p in policies)
        self._timeout = max(p.timeout for p in policies)
        self.retimed = True


@dataclass(eq=False)
class _ChannelRef:
    channel: grpc.aio.Channel
    stub: health_pb2_grpc.HealthStub
    users: set[TargetKey] = field(default_factory=set)


class HealthChecker:
    """Runs active health checks for the endpoints of every service the agent serves, one
    check loop per (address, health service name) however many services share it.

    Give it targets with :meth:`set_targets` (before or after :meth:`start`); read the
    verdicts from :attr:`table`. A check counts as a success only when the endpoint answers
    SERVING within the service's timeout; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, any RPC
    error and a timeout are failures. A check loop never dies of an error: it logs it and
    checks again at the next interval. ``metrics`` (default: the agent's, on the global
    meter) counts and times every result a (service, endpoint) takes and reports the table's
    endpoint health.
    """

    def __init__(
        self,
        table: HealthTable | None = None,
        *,
        channel_options: Sequence[tuple[str, int | str]] = DEFAULT_CHANNEL_OPTIONS,
        rng: random.Random | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.table = table if table is not None else HealthTable()
        self._metrics = metrics if metrics is not None else agent_metrics()
        self._metrics.observe_endpoints(self.table)
        self._channel_options = list(channel_options)
        self._rng = rng if rng is not None else random.Random()
        self._subscribed: dict[str, dict[str, TargetKey]] = {}
        """service -> address -> the target whose results it takes."""
        self._targets: dict[TargetKey, _Target] = {}
        self._channels: dict[str, _ChannelRef] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._panic: dict[str, bool] = {}
        self._started = False
        self.checks = 0
        """Check RPCs made since the checker was built (every target, every result)."""
        self.table.changed.connect(self._on_table_change)

    # -- targets -------------------------------------------------------------------------

    def set_targets(
        self,
        service: str,
        addresses: Sequence[str],
        policy: config_pb2.HealthCheckPolicy | HealthPolicy | None = None,
        placement: Mapping[str, Placement] | None = None,
        spill_over_below: float = SPILL_OVER_BELOW,
    ) -> None:
        """Checks exactly ``addresses`` for ``service`` from now on, under ``policy`` (0 or
        unset fields take the defaults: 5s interval, 1s timeout, thresholds 3 and 2);
        ``placement`` and ``spill_over_below`` go to the table
        (:meth:`HealthTable.update_targets`).
        Endpoints that stay keep their state; new ones take the next result of their target
        (checked soon if no other service checks it yet); removed ones are forgotten. An
        empty list is :meth:`remove_service`."""
        pol = policy if isinstance(policy, HealthPolicy) else HealthPolicy.from_proto(policy)
        wanted = list(dict.fromkeys(addresses))
        held = self._subscribed.get(service, {})
        for address in [a for a in held if a not in wanted]:
            self._unsubscribe(service, address)
        self.table.update_targets(service, wanted, pol, placement, spill_over_below)
        for address in wanted:
            key = (address, pol.service_name)
            old = held.get(address)
            if old is not None and old != key:  # the health service name changed
                self._unsubscribe(service, address)
                old = None
            if old is None:
                self._subscribe(service, address, key, pol)
                continue
            target = self._targets[key]
            subscriber = target.subscribers[service]
            if subscriber.policy != pol:
                subscriber.policy = pol
                target.retimed = False

    def remove_service(self, service: str) -> None:
        """Stops checking every endpoint of ``service`` and forgets their state; targets that
        other services share go on."""
        for address in list(self._subscribed.get(service, {})):
            self._unsubscribe(service, address)
        self.table.remove_service(service)
        self._panic.pop(service, None)

    def targets(self) -> dict[str, list[str]]:
        """The addresses checked, per service."""
        return {service: list(held) for service, held in self._subscribed.items()}

    def shared_targets(self) -> dict[TargetKey, list[str]]:
        """The check loops: (address, health service name) -> the services taking its
        results, sorted."""
        return {key: sorted(t.subscribers) for key, t in self._targets.items()}

    def channels(self) -> list[str]:
        """The addresses the checker holds a channel to."""
        return list(self._channels)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Starts a check loop for every target set so far (and for later ones)."""
        if self._started:
            return
        self._started = True
        for target in self._targets.values():
            self._launch(target)
        log.info(
            "health checker started",
            endpoints=sum(len(held) for held in self._subscribed.values()),
            targets=len(self._targets),
        )

    async def stop(self) -> None:
        """Stops every check loop and closes every channel. Targets are kept, so a later
        :meth:`start` resumes checking them."""
        if not self._started:
            await self._await_closing()
            return
        self._started = False
        tasks = [t.task for t in self._targets.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for target in self._targets.values():
            target.task = None
        for ref in list(self._channels.values()):
            self._close_channel(ref)
        self._channels.clear()
        await self._await_closing()
        log.info("health checker stopped")

    # -- internals: subscriptions ----------------------------------------------------------

    def _subscribe(self, service: str, address: str, key: TargetKey, pol: HealthPolicy) -> None:
        self._subscribed.setdefault(service, {})[address] = key
        target = self._targets.get(key)
        new = target is None
        if target is None:
            target = self._targets[key] = _Target(key)
        target.subscribers[service] = _Subscriber(service, address, pol)
        target.retimed = False
        if new and self._started:
            self._launch(target)

    def _unsubscribe(self, service: str, address: str) -> None:
        held = self._subscribed[service]
        key = held.pop(address)
        if not held:
            del self._subscribed[service]
        target = self._targets[key]
        del target.subscribers[service]
        if target.subscribers:
            target.retimed = False
            return
        del self._targets[key]
        if target.task is not None:
            target.task.cancel()
            target.task = None
        ref = self._channels.get(target.address)
        if ref is not None:
            ref.users.discard(key)
            if not ref.users:
                del self._channels[target.address]
                self._close_channel(ref)

    # -- internals: channels ---------------------------------------------------------------

    def _channel_for(self, target: _Target) -> _ChannelRef:
        ref = self._channels.get(target.address)
        if ref is None:
            channel = grpc.aio.insecure_channel(target.address, options=self._channel_options)
            ref = _ChannelRef(channel, health_pb2_grpc.HealthStub(channel))
            self._channels[target.address] = ref
        ref.users.add(target.key)
        return ref

    def _close_channel(self, ref: _ChannelRef) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing was ever opened on one
            return
        task = loop.create_task(ref.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _await_closing(self) -> None:
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    # -- internals: the check loops --------------------------------------------------------

    def _launch(self, target: _Target) -> None:
        address, name = target.key
        target.task = asyncio.get_running_loop().create_task(
            self._run(target), name=f"health-check {address} {name!r}"
        )

    async def _sleep_until(self, when: float, interval: float) -> None:
        """Sleeps until ``when`` (event-loop time) rounded up to the tick."""
        tick = min(TICK, interval / 10)
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        handle = loop.call_at(math.ceil(when / tick) * tick, _wake, woken)
        try:
            await woken
        finally:
            handle.cancel()

    async def _run(self, target: _Target) -> None:
        loop = asyncio.get_running_loop()
        first = self._rng.uniform(0.0, min(target.interval, FIRST_CHECK_MAX_DELAY))
        await self._sleep_until(loop.time() + first, target.interval)
        request = health_pb2.HealthCheckRequest(service=target.service_name)
        while True:
            try:
                started = loop.time()
                ok, reason = await self._check(target, request)
                now = loop.time()
                self.checks += 1
                self._fan_out(target, ok, reason, now - started, now)
            except Exception:
                log.exception(
                    "health check loop error",
                    address=target.address,
                    service_name=target.service_name,
                )
            interval = target.interval
            wait = interval * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER)
            await self._sleep_until(loop.time() + wait, interval)

    async def _check(
        self, target: _Target, request: health_pb2.HealthCheckRequest
    ) -> tuple[bool, str]:
        """One Check call: (success, reason)."""
        ref = self._channel_for(target)
        try:
            response = await ref.stub.Check(request, timeout=target.timeout)
        except grpc.aio.AioRpcError as err:
            return False, f"{err.code().name}: {err.details() or ''}".rstrip(": ")
        except TimeoutError:
            return False, "timeout"
        status: int = response.status
        if status == health_pb2.HealthCheckResponse.SERVING:
            return True, "SERVING"
        try:
            name = str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
        except ValueError:
            name = f"status {status}"
        return False, name

    def _fan_out(self, target: _Target, ok: bool, reason: str, took: float, now: float) -> None:
        """Gives one result to every subscriber that is due for one, each judged by its own
        timeout. One subscriber's error does not keep the result from the others."""
        if not ok:
            log.debug(
                "health check failed",
                address=target.address,
                service_name=target.service_name,
                reason=reason,
            )
        for sub in list(target.subscribers.values()):
            if now < sub.next_due:
                continue
            sub.next_due = now + sub.policy.interval * TAKE_EVERY
            try:
                self._take(sub, ok, reason, took)
            except Exception:
                log.exception(
                    "health check loop error",
                    service=sub.service,
                    address=sub.address,
                    service_name=target.service_name,
                )

    def _take(self, sub: _Subscriber, ok: bool, reason: str, took: float) -> None:
        if ok and took > sub.policy.timeout:
            ok = False
            reason = (
                f"DEADLINE_EXCEEDED: answered in {took:.3f}s,"
                f" over the {sub.policy.timeout:g}s timeout"
            )
        self._metrics.health_check(sub.service, sub.address, ok, took)
        transition = self.table.record(sub.service, sub.address, ok)
        if transition is not None:
            log.info(
                "endpoint health changed",
                service=sub.service,
                address=sub.address,
                old=transition.old,
                new=transition.new,
                reason=reason,
            )

    def _on_table_change(self, service: str) -> None:
        panic = self.table.in_panic(service)
        if panic == self._panic.get(service, False):
            return
        self._panic[service] = panic
        if panic:
            log.warning(
                "health panic: too few usable endpoints in every zone, ignoring health checks",
                service=service,
                statuses=self.table.statuses(service),
                panic_threshold=self.table.panic_threshold,
            )
        else:
            log.info("health panic over, health checks applied again", service=service)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "HealthChecker",
    "HealthPolicy",
    "HealthTable",
    "TargetKey",
]
