"""The process's link to its node agent: breaker state kept current by a watch stream, and
call outcomes reported in batches, both on background threads, so that a call never waits
for the agent (DESIGN.md, decision 4).

One :class:`AgentLink` per agent address per process (:func:`link_for`). If the agent is
unreachable the link fails open: calls are admitted, outcomes are dropped, one warning is
logged, and it reconnects with backoff.

With TLS files, a link to a TCP agent address uses mTLS; the files are read when the channel
is made, and again after a failed call if they changed on disk (a renewed certificate). A
unix-socket address is always plaintext (the socket's file mode guards it).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc
import structlog

from control.backoff import Backoff
from control.tls import TlsError, TlsFiles, channel_credentials
from mesh.v1 import agent_pb2, agent_pb2_grpc
from mesh_agent._bootstrap import is_unix

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 0.005  # seconds a failure waits for others to share its batch
IDLE_FLUSH_INTERVAL = 0.1  # seconds successes may wait: they cannot open a breaker
MAX_BATCH = 512
MAX_PENDING = 50_000  # outcomes kept while the agent is away; older ones are dropped
RECONNECT = Backoff(base=0.1, cap=5.0)
Outcome = tuple[str, str, float, float, bool]  # service, code, latency s, end time, probe


class Decision(Enum):
    ADMIT = "admit"
    PROBE = "probe"  # admitted with a half-open permit: its outcome decides the breaker
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class BreakerView:
    """What a process knows of one service's breaker."""

    state: int
    open_until: float
    enabled: bool


CLOSED = agent_pb2.BREAKER_STATE_CLOSED
OPEN = agent_pb2.BREAKER_STATE_OPEN
HALF_OPEN = agent_pb2.BREAKER_STATE_HALF_OPEN


def view_of(status: agent_pb2.BreakerStatus) -> BreakerView:
    return BreakerView(
        state=status.state,
        open_until=status.open_until.ToNanoseconds() / 1e9,
        enabled=status.enabled,
    )


class AgentLink:
    """Thread-safe. The hot path (:meth:`decide`, :meth:`record`) takes no lock and does no
    I/O: it reads a dict that the watch thread replaces, and appends to a deque."""

    def __init__(
        self, target: str, client_id: str | None = None, *, tls: TlsFiles | None = None
    ) -> None:
        self.target = target
        self.client_id = client_id or f"pid-{os.getpid()}"
        self.tls = None if is_unix(target) else tls
        self.breakers: dict[str, BreakerView] = {}
        self._services: set[str] = set()
        self._services_changed = threading.Event()
        # Outcomes wait here as plain tuples: the call path only appends (no message built,
        # no thread woken but once per batch); the report thread drains and sends them.
        self._outcomes: collections.deque[Outcome] = collections.deque()
        self._wake = threading.Event()
        self._armed = False
        self._lock = threading.Lock()
        self._tls_stamp = self.tls.stamp() if self.tls is not None else ()
        self._channel = self._new_channel()
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._closed = threading.Event()
        self._warned = False
        self._watch_call: grpc.Future[Any] | None = None
        self._threads = [
            threading.Thread(target=self._watch_loop, name="mesh-breaker-watch", daemon=True),
            threading.Thread(target=self._report_loop, name="mesh-outcome-report", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- hot path ------------------------------------------------------------------------------

    def decide(self, service: str) -> tuple[Decision, float]:
        """Whether a call to ``service`` may go out, and until when a rejection holds."""
        view = self.breakers.get(service)
        if view is None:
            if service not in self._services:
                self.watch(service)
            return Decision.ADMIT, 0.0
        if view.state == CLOSED or not view.enabled:
            return Decision.ADMIT, 0.0
        if view.state == OPEN and time.time() < view.open_until:
            return Decision.REJECT, view.open_until
        return self._permit(service)

    def record(self, service: str, code: str, latency: float, *, probe: bool = False) -> None:
        outcomes = self._outcomes
        if len(outcomes) >= MAX_PENDING:
            return
        outcomes.append((service, code, latency, time.time(), probe))
        # Failures and probe results can change a breaker: send them within milliseconds.
        # Successes ride along, or go with the next periodic flush.
        if (code != "OK" or probe) and not self._armed:
            self._armed = True
            self._wake.set()

    # -- slow path -----------------------------------------------------------------------------

    def _permit(self, service: str) -> tuple[Decision, float]:
        """Half-open (or open and due): one RPC to the agent for a probe permit."""
        try:
            reply = self._stub.AcquirePermit(
                agent_pb2.AcquirePermitRequest(service=service), timeout=1.0
            )
        except grpc.RpcError as error:
            self._agent_away(error)
            return Decision.ADMIT, 0.0
        view = view_of(reply.status)
        self.breakers[service] = view
        if reply.granted:
            return Decision.PROBE, 0.0
        if view.state == CLOSED or not view.enabled:
            return Decision.ADMIT, 0.0
        return Decision.REJECT, view.open_until

    def watch(self, service: str) -> None:
        with self._lock:
            if service in self._services:
                return
            self._services.add(service)
        self._services_changed.set()
        call = self._watch_call
        if call is not None:
            call.cancel()  # restart the watch with the new set

    def _new_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, channel_credentials(self.tls))

    def _reload_tls(self) -> None:
        """Makes a new channel if the TLS files changed since the current one was made; the
        old channel is closed, which ends a call still on it (it is retried)."""
        if self.tls is None or self._closed.is_set():
            return
        with self._lock:
            stamp = self.tls.stamp()
            if stamp == self._tls_stamp:
                return
            self._tls_stamp = stamp
            try:
                channel = self._new_channel()
            except TlsError as error:
                log.error("new TLS files not usable, keeping the previous ones", error=str(error))
                return
            old, self._channel = self._channel, channel
            self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        log.info("TLS files changed; reconnecting to the mesh agent", agent=self.target)
        old.close()

    def _agent_away(self, error: grpc.RpcError | None) -> None:
        self._reload_tls()
        if not self._warned:
            self._warned = True
            log.warning(
                "mesh agent unreachable; calls are admitted without breaker checks",
                agent=self.target,
                error=error.details() if isinstance(error, grpc.Call) else str(error),
            )

    # -- background threads --------------------------------------------------------------------

    def _watch_loop(self) -> None:
        delays = RECONNECT.delays()
        while not self._closed.is_set():
            with self._lock:
                services = sorted(self._services)
            self._services_changed.clear()
            if not services:
                self._services_changed.wait(1.0)
                continue
            call = self._stub.WatchBreakers(agent_pb2.WatchBreakersRequest(services=services))
            self._watch_call = call
            try:
                for update in call:
                    merged = dict(self.breakers)
                    for status in update.breakers:
                        merged[status.service] = view_of(status)
                    self.breakers = merged
                    if self._warned:
                        self._warned = False
                        log.info("mesh agent reachable again", agent=self.target)
                    delays = RECONNECT.delays()
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                if error.code() == grpc.StatusCode.CANCELLED and self._services_changed.is_set():
                    continue  # restarted on purpose, with more services
                self._agent_away(error)
                # Fail open: forget states that can no longer be kept current.
                self.breakers = {}
                self._closed.wait(next(delays))
            finally:
                self._watch_call = None

    def _batches(self) -> Iterator[agent_pb2.ReportOutcomesRequest]:
        outcomes = self._outcomes
        while not self._closed.is_set():
            if self._wake.wait(IDLE_FLUSH_INTERVAL):
                if self._closed.is_set():
                    return
                time.sleep(FLUSH_INTERVAL)  # let the batch gather
            # Re-arm before draining: an outcome appended from now on wakes us again.
            self._wake.clear()
            self._armed = False
            while outcomes:
                batch: list[agent_pb2.CallOutcome] = []
                while outcomes and len(batch) < MAX_BATCH:
                    service, code, latency, ended, probe = outcomes.popleft()
                    batch.append(
                        agent_pb2.CallOutcome(
                            service=service,
                            code=code,
                            latency_us=int(latency * 1e6),
                            end_unix_ms=int(ended * 1000),
                            probe=probe,
                        )
                    )
                yield agent_pb2.ReportOutcomesRequest(client_id=self.client_id, outcomes=batch)

    def _report_loop(self) -> None:
        delays = RECONNECT.delays()
        while not self._closed.is_set():
            try:
                self._stub.ReportOutcomes(self._batches())
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                self._agent_away(error)
                self._closed.wait(next(delays))
            else:
                delays = RECONNECT.delays()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        call = self._watch_call
        if call is not None:
            call.cancel()
        self._channel.close()


_links: dict[tuple[str, TlsFiles | None], AgentLink] = {}
_links_lock = threading.Lock()


def link_for(target: str, tls: TlsFiles | None = None) -> AgentLink:
    """The process's one link to the agent at ``target`` (mTLS with ``tls`` if ``target`` is
    TCP)."""
    key = (target, None if is_unix(target) else tls)
    with _links_lock:
        link = _links.get(key)
        if link is None:
            link = _links[key] = AgentLink(target, tls=key[1])
        return link
