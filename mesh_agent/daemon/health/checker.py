"""The node agent's active health checker: ``grpc.health.v1.Health/Check`` against every
endpoint the agent serves, fed into a :class:`~mesh_agent.daemon.health.table.HealthTable`.

The checker is transport only (DESIGN decision 5): it runs one asyncio task per
(service, address), keeps one grpc.aio channel per endpoint address, and records each check's
result in the table, which decides the endpoint's state and the overrides the agent's local
EDS applies (DESIGN decision 3).

Ownership: a :class:`HealthChecker` and its table belong to the agent's asyncio event loop;
call every method from that loop.
"""

from __future__ import annotations

import asyncio
import random
import time
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
"""Each wait between checks is the interval ±10%, so checks of many endpoints spread out."""
FIRST_CHECK_MAX_DELAY: Final = 1.0
"""The first check of a new endpoint runs after a random delay of at most this (or the
interval, if shorter)."""

DEFAULT_CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    # Reconnect quickly, so an endpoint that comes back is seen within an interval or two.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Health checks must not share a subchannel pool with anything else in the process.
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclass(eq=False)
class _Target:
    service: str
    address: str
    policy: HealthPolicy
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _ChannelRef:
    channel: grpc.aio.Channel
    stub: health_pb2_grpc.HealthStub
    users: set[tuple[str, str]] = field(default_factory=set)


class HealthChecker:
    """Runs active health checks for the endpoints of every service the agent serves.

    Give it targets with :meth:`set_targets` (before or after :meth:`start`); read the
    verdicts from :attr:`table`. A check counts as a success only when the endpoint answers
    SERVING; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, any RPC error and a timeout are failures.
    A check loop never dies of an error: it logs it and checks again at the next interval.
    ``metrics`` (default: the agent's, on the global meter) counts and times every check by
    result and reports the table's endpoint health.
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
        self._targets: dict[tuple[str, str], _Target] = {}
        self._channels: dict[str, _ChannelRef] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._panic: dict[str, bool] = {}
        self._started = False
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
        Endpoints that stay keep their state; new ones are checked soon; removed ones stop
        being checked and are forgotten. An empty list is :meth:`remove_service`."""
        pol = policy if isinstance(policy, HealthPolicy) else HealthPolicy.from_proto(policy)
        wanted = list(dict.fromkeys(addresses))
        for key in [k for k in self._targets if k[0] == service and k[1] not in wanted]:
            self._drop(key)
        self.table.update_targets(service, wanted, pol, placement, spill_over_below)
        for address in wanted:
            key = (service, address)
            target = self._targets.get(key)
            if target is not None:
                target.policy = pol  # the running loop reads it on its next round
                continue
            target = _Target(service, address, pol)
            self._targets[key] = target
            if self._started:
                self._launch(target)

    def remove_service(self, service: str) -> None:
        """Stops checking every endpoint of ``service`` and forgets their state."""
        for key in [k for k in self._targets if k[0] == service]:
            self._drop(key)
        self.table.remove_service(service)
        self._panic.pop(service, None)

    def targets(self) -> dict[str, list[str]]:
        """The addresses checked, per service."""
        out: dict[str, list[str]] = {}
        for service, address in self._targets:
            out.setdefault(service, []).append(address)
        return out

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Starts a check loop for every target set so far (and for later ones)."""
        if self._started:
            return
        self._started = True
        for target in self._targets.values():
            self._launch(target)
        log.info("health checker started", endpoints=len(self._targets))

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

    # -- internals -----------------------------------------------------------------------

    def _launch(self, target: _Target) -> None:
        target.task = asyncio.get_running_loop().create_task(
            self._run(target), name=f"health-check {target.service} {target.address}"
        )

    def _drop(self, key: tuple[str, str]) -> None:
        target = self._targets.pop(key)
        if target.task is not None:
            target.task.cancel()
            target.task = None
        ref = self._channels.get(target.address)
        if ref is not None:
            ref.users.discard(key)
            if not ref.users:
                del self._channels[target.address]
                self._close_channel(ref)

    def _channel_for(self, target: _Target) -> _ChannelRef:
        ref = self._channels.get(target.address)
        if ref is None:
            channel = grpc.aio.insecure_channel(target.address, options=self._channel_options)
            ref = _ChannelRef(channel, health_pb2_grpc.HealthStub(channel))
            self._channels[target.address] = ref
        ref.users.add((target.service, target.address))
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

    async def _run(self, target: _Target) -> None:
        first = min(target.policy.interval, FIRST_CHECK_MAX_DELAY)
        await asyncio.sleep(self._rng.uniform(0.0, first))
        while True:
            try:
                started = time.perf_counter()
                ok, reason = await self._check(target)
                took = time.perf_counter() - started
                self._metrics.health_check(target.service, target.address, ok, took)
                transition = self.table.record(target.service, target.address, ok)
                if transition is not None:
                    log.info(
                        "endpoint health changed",
                        service=target.service,
                        address=target.address,
                        old=transition.old,
                        new=transition.new,
                        reason=reason,
                    )
                elif not ok:
                    log.debug(
                        "health check failed",
                        service=target.service,
                        address=target.address,
                        reason=reason,
                    )
            except Exception:
                log.exception(
                    "health check loop error", service=target.service, address=target.address
                )
            interval = target.policy.interval
            await asyncio.sleep(interval * self._rng.uniform(1.0 - JITTER, 1.0 + JITTER))

    async def _check(self, target: _Target) -> tuple[bool, str]:
        """One Check call: (success, reason)."""
        ref = self._channel_for(target)
        request = health_pb2.HealthCheckRequest(service=target.policy.service_name)
        try:
            response = await ref.stub.Check(request, timeout=target.policy.timeout)
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


__all__ = ["DEFAULT_CHANNEL_OPTIONS", "HealthChecker", "HealthPolicy", "HealthTable"]
