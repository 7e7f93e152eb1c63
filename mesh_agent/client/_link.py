"""The process's link to its node agent: breaker state and each service's call policy kept
current by a watch stream, and call outcomes reported in batches, both on background threads,
so that a call never waits for the agent (DESIGN.md, decision 4). The one exception is a call
to a service whose call policy the agent has not told yet (typically the first one): it waits
for it, at most :data:`POLICY_WAIT`, and not at all while the agent is unreachable.

One :class:`AgentLink` per agent address per process (:func:`link_for`). If the agent is
unreachable the link fails open: calls are admitted, outcomes are dropped, one warning is
logged, and it reconnects with backoff.

With TLS files, a link to a TCP agent address uses mTLS. The files' stamp is looked at every
:data:`TLS_CHECK_INTERVAL` seconds (and after a failed call): when they changed (a renewed
certificate), the link moves to a new channel made with them, restarts its watch and report
streams there, and closes the old channel once calls still on it had time to finish. A
unix-socket address is always plaintext (the socket's file mode guards it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import grpc
import structlog

from mesh.v1 import agent_pb2, agent_pb2_grpc, config_pb2
from mesh_agent.client._bootstrap import is_unix
from mesh_agent.client._caller import CALLER
from mesh_core.backoff import Backoff
from mesh_core.errors import ConfigError, TlsError
from mesh_core.routing import RouteMatcher, RouteTimeouts
from mesh_core.tls import TlsFiles, channel_credentials

log = structlog.get_logger(__name__)

FLUSH_INTERVAL = 0.005  # seconds a failure waits for others to share its batch
IDLE_FLUSH_INTERVAL = 0.1  # seconds successes may wait: they cannot open a breaker
MAX_BATCH = 512
MAX_PENDING = 50_000  # outcomes kept while the agent is away; older ones are dropped
RECONNECT = Backoff(base=0.1, cap=5.0)
POLICY_WAIT = 1.0  # seconds the first calls to a service wait for its call policy
TLS_CHECK_INTERVAL = 2.0  # seconds between looks at the TLS files' stamp
DECLARE_MARGIN = 5.0  # seconds a declaration's RPC may take beyond the wait it asks for
RETIRE_GRACE = 3.0  # seconds an old channel stays open for calls on it (AcquirePermit: 1 s)
UNKNOWN: Final = -1.0
"""``AgentLink.timeouts.get(service, UNKNOWN)``: the agent has not told the service's policy."""
Outcome = tuple[str, str, float, float, bool]  # service, code, latency s, end time, probe


class Decision(Enum):
    ADMIT = "admit"
    PROBE = "probe"  # admitted with a half-open permit: its outcome decides the breaker
    REJECT = "reject"


_ADMITTED: Final = (Decision.ADMIT, 0.0)  # built once: decide() returns it on almost every call


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


CallTimeout = float | RouteTimeouts | None
"""A service's call timeout as told by the agent: seconds, none, or one per route."""


def _seconds(message: Any) -> float | None:
    return message.timeout.ToNanoseconds() / 1e9 if message.HasField("timeout") else None


def call_timeout_of(policy: agent_pb2.CallPolicy) -> CallTimeout:
    """The timeout the client library applies to a service's calls, from its call policy."""
    default = _seconds(policy)
    if not policy.routes:
        return default
    try:
        routes = tuple((RouteMatcher.of(r.match), _seconds(r)) for r in policy.routes)
    except ConfigError as error:  # validated upstream; never stop calls over a bad regex
        log.warning(
            "ignoring the routes of a call policy", service=policy.service, error=str(error)
        )
        return default
    return RouteTimeouts(default, routes)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AgentLink:
    """Thread-safe. The hot path (:meth:`decide`, :meth:`record`, reading :attr:`timeouts`)
    takes no lock and does no I/O: it reads dicts that the watch thread replaces, and appends
    to a deque.

    ``timeouts`` maps each service whose call policy the agent has told to its timeout in
    seconds, or None when it has none. ``policy_wait`` bounds the wait for a service's call
    policy (:data:`POLICY_WAIT`)."""

    def __init__(
        self,
        target: str,
        client_id: str | None = None,
        *,
        tls: TlsFiles | None = None,
        policy_wait: float = POLICY_WAIT,
    ) -> None:
        self.target = target
        self.policy_wait = policy_wait
        self.client_id = client_id or f"pid-{os.getpid()}"
        self.tls = None if is_unix(target) else tls
        self.breakers: dict[str, BreakerView] = {}
        self.timeouts: dict[str, CallTimeout] = {}
        self.authorization: dict[str, tuple[config_pb2.AuthorizationRule, ...]] = {}
        """Each watched service's authorization rules, as the agent last told them."""
        self._services: set[str] = set()
        self._restart_watch = threading.Event()  # more services, or a new channel
        # Calls waiting for a service's call policy: their wake-up functions, by service.
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._wait_until: dict[str, float] = {}  # no call to the service waits past this
        self._unknown_logged: set[str] = set()
        # Outcomes wait here as plain tuples: the call path only appends (no message built,
        # no thread woken but once per batch); the report thread drains and sends them.
        self._outcomes: collections.deque[Outcome] = collections.deque()
        self._wake = threading.Event()
        self._armed = False
        self._lock = threading.Lock()
        self._tls_stamp = self.tls.stamp() if self.tls is not None else ()
        self._next_tls_check = time.monotonic() + TLS_CHECK_INTERVAL
        self._channel = self._new_channel()
        self._stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        self._retired: list[tuple[grpc.Channel, threading.Timer]] = []
        self._closed = threading.Event()
        self._away = False  # since a failure, until the watch stream answers again
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
            return _ADMITTED
        if view.state == CLOSED or not view.enabled:
            return _ADMITTED
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

    # -- call policies -------------------------------------------------------------------------

    def call_timeout(self, service: str, limit: float | None = None) -> CallTimeout:
        """``service``'s call timeout (seconds), or None when it has none. If the agent has
        not told it yet, waits for it: at most ``limit`` seconds, and only until
        :attr:`policy_wait` after the first call that waited for it; not at all while the
        agent is unreachable (None then)."""
        timeout = self.timeouts.get(service, UNKNOWN)
        if timeout != UNKNOWN:
            return timeout
        wait = self._wait_time(service, limit)
        if wait > 0:
            woken = threading.Event()
            self._add_waiter(service, woken.set)
            try:
                if not self._settled(service):
                    woken.wait(wait)
            finally:
                self._remove_waiter(service, woken.set)
        return self._known(service)

    async def call_timeout_async(self, service: str, limit: float | None = None) -> CallTimeout:
        """:meth:`call_timeout` for asyncio: waits without blocking the event loop."""
        timeout = self.timeouts.get(service, UNKNOWN)
        if timeout != UNKNOWN:
            return timeout
        wait = self._wait_time(service, limit)
        if wait > 0:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_resolve, future)

            self._add_waiter(service, wake)
            try:
                if not self._settled(service):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # not wait_for: see mesh_core.aio
                            await future
            finally:
                self._remove_waiter(service, wake)
        return self._known(service)

    def _wait_time(self, service: str, limit: float | None) -> float:
        if service not in self._services:
            self.watch(service)
        if self._away or self._closed.is_set():
            return 0.0
        now = time.monotonic()
        with self._lock:
            until = self._wait_until.setdefault(service, now + self.policy_wait)
        wait = until - now
        return wait if limit is None else min(wait, limit)

    def _settled(self, service: str) -> bool:
        """Whether a call waiting for ``service``'s policy may go: the agent told it, or is
        unreachable, or the link is closed."""
        return service in self.timeouts or self._away or self._closed.is_set()

    def _known(self, service: str) -> CallTimeout:
        timeout = self.timeouts.get(service, UNKNOWN)
        if timeout != UNKNOWN:
            return timeout
        waited_out = time.monotonic() >= self._wait_until.get(service, 0.0)
        if waited_out and not self._away and service not in self._unknown_logged:
            self._unknown_logged.add(service)
            log.warning(
                "the mesh agent has not told the service's call policy; its calls go "
                "without the policy timeout until it does",
                service=service,
                agent=self.target,
                waited_s=self.policy_wait,
            )
        return None

    def _add_waiter(self, service: str, wake: Callable[[], None]) -> None:
        with self._lock:
            self._waiters.setdefault(service, []).append(wake)

    def _remove_waiter(self, service: str, wake: Callable[[], None]) -> None:
        with self._lock:
            waiting = self._waiters.get(service)
            if waiting is not None and wake in waiting:
                waiting.remove(wake)
                if not waiting:
                    del self._waiters[service]

    def _wake_policy_waiters(self, services: list[str] | None = None) -> None:
        """Wakes the calls waiting for these services' policies (for every service: None)."""
        with self._lock:
            if services is None:
                woken = [w for waiting in self._waiters.values() for w in waiting]
            else:
                woken = [w for s in services for w in self._waiters.get(s, ())]
        for wake in woken:
            wake()

    def _apply(self, update: agent_pb2.WatchBreakersResponse) -> None:
        """A message of the watch stream: breaker states, call policies."""
        if update.breakers:
            merged = dict(self.breakers)
            for status in update.breakers:
                merged[status.service] = view_of(status)
            self.breakers = merged
        if update.call_policies:
            timeouts = dict(self.timeouts)
            rules = dict(self.authorization)
            for policy in update.call_policies:
                timeouts[policy.service] = call_timeout_of(policy)
                rules[policy.service] = tuple(policy.authorization)
            self.timeouts = timeouts
            self.authorization = rules
            self._wake_policy_waiters([policy.service for policy in update.call_policies])
        if self._away:
            self._away = False
            log.info("mesh agent reachable again", agent=self.target)

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
        self._restart_watch.set()
        call = self._watch_call
        if call is not None:
            call.cancel()  # restart the watch with the new set

    def _new_channel(self) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, channel_credentials(self.tls))

    def _check_tls(self) -> bool:
        """Every :data:`TLS_CHECK_INTERVAL`: :meth:`_reload_tls`. True when it switched."""
        if self.tls is None or time.monotonic() < self._next_tls_check:
            return False
        self._next_tls_check = time.monotonic() + TLS_CHECK_INTERVAL
        return self._reload_tls()

    def _reload_tls(self) -> bool:
        """Moves to a new channel if the TLS files changed since the current one was made:
        the watch stream restarts on it at once, the report stream when its current batch is
        sent, and the old channel is closed :data:`RETIRE_GRACE` later, when the calls still
        on it (a probe permit, the last reports) have finished. True when it switched."""
        if self.tls is None or self._closed.is_set():
            return False
        with self._lock:
            stamp = self.tls.stamp()
            if stamp == self._tls_stamp:
                return False
            self._tls_stamp = stamp
            try:
                channel = self._new_channel()
            except TlsError as error:
                log.error("new TLS files not usable, keeping the previous ones", error=str(error))
                return False
            old, self._channel = self._channel, channel
            self._stub = agent_pb2_grpc.AgentServiceStub(channel)
            timer = threading.Timer(RETIRE_GRACE, old.close)
            timer.daemon = True
            self._retired = [(c, t) for c, t in self._retired if t.is_alive()]
            self._retired.append((old, timer))
        log.info("TLS files changed; moving the link to the mesh agent to them", agent=self.target)
        timer.start()
        self._restart_watch.set()
        call = self._watch_call
        if call is not None:
            call.cancel()
        return True

    def _agent_away(self, error: grpc.RpcError | None) -> None:
        self._reload_tls()
        if not self._away:
            self._away = True
            log.warning(
                f"mesh agent unreachable at {self.target}; calls are admitted without breaker "
                "checks. Point the client library at the node's agent with $MESH_AGENT "
                "(unix:PATH or HOST:PORT) or the agent= argument of mesh_channel()",
                agent=self.target,
                error=error.details() if isinstance(error, grpc.Call) else str(error),
            )
        self._wake_policy_waiters()  # calls waiting for a call policy go without it

    # -- background threads --------------------------------------------------------------------

    def _watch_loop(self) -> None:
        delays = RECONNECT.delays()
        while not self._closed.is_set():
            with self._lock:
                services = sorted(self._services)
                stub = self._stub
            self._restart_watch.clear()
            if not services:
                self._restart_watch.wait(1.0)
                continue
            call = stub.WatchBreakers(agent_pb2.WatchBreakersRequest(services=services))
            self._watch_call = call
            if self._restart_watch.is_set():
                call.cancel()  # asked for while the call was being made
            try:
                for update in call:
                    self._apply(update)
                    delays = RECONNECT.delays()
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                if self._restart_watch.is_set() or stub is not self._stub:
                    continue  # restarted on purpose: more services, or a new channel
                self._agent_away(error)
                # Fail open: forget states that can no longer be kept current.
                self.breakers = {}
                self._closed.wait(next(delays))
            finally:
                self._watch_call = None

    def _batches(self, stub: Any) -> Iterator[agent_pb2.ReportOutcomesRequest]:
        """The report stream's requests, on ``stub``'s channel: it ends (and the report loop
        starts another) when the link moves to a new channel."""
        outcomes = self._outcomes
        while not self._closed.is_set():
            if self._check_tls() or stub is not self._stub:
                return
            if self._wake.wait(IDLE_FLUSH_INTERVAL):
                if self._closed.is_set():
                    return
                time.sleep(FLUSH_INTERVAL)  # let the batch gather
            # Re-arm before draining: an outcome appended from now on wakes us again.
            self._wake.clear()
            self._armed = False
            while outcomes:
                yield self._batch(outcomes)

    def _batch(self, outcomes: collections.deque[Outcome]) -> agent_pb2.ReportOutcomesRequest:
        """Up to :data:`MAX_BATCH` outcomes off the front of ``outcomes``, as one request. Each
        outcome is built in place in the request (``add``): a message built apart and then
        put in the request would be built twice."""
        request = agent_pb2.ReportOutcomesRequest(
            client_id=self.client_id, caller=CALLER.current(self.client_id)
        )
        add = request.outcomes.add
        popleft = outcomes.popleft
        for _ in range(min(len(outcomes), MAX_BATCH)):
            service, code, latency, ended, probe = popleft()
            if probe:
                add(
                    service=service,
                    code=code,
                    latency_us=int(latency * 1e6),
                    end_unix_ms=int(ended * 1000),
                    probe=True,
                )
            else:  # the default, left out: a keyword argument less to parse
                add(
                    service=service,
                    code=code,
                    latency_us=int(latency * 1e6),
                    end_unix_ms=int(ended * 1000),
                )
        return request

    def _report_loop(self) -> None:
        delays = RECONNECT.delays()
        while not self._closed.is_set():
            stub = self._stub
            try:
                stub.ReportOutcomes(self._batches(stub))
            except grpc.RpcError as error:
                if self._closed.is_set():
                    return
                if stub is not self._stub:
                    continue  # its channel was replaced (and closed) under it
                self._agent_away(error)
                self._closed.wait(next(delays))
            else:
                delays = RECONNECT.delays()

    # -- declarations (slow path: at set-up, never per call) ---------------------------------

    def hold_identity(self, service: str, wait: float) -> agent_pb2.IdentityStatus:
        """Asks the agent to keep ``service``'s identity for this process and waits (up to
        ``wait`` seconds) for its certificate. Raises grpc.RpcError when the agent cannot be
        asked."""
        request = agent_pb2.HoldIdentityRequest(service=service)
        request.wait.FromNanoseconds(int(wait * 1e9))
        response: agent_pb2.HoldIdentityResponse = self._stub.HoldIdentity(
            request, timeout=wait + DECLARE_MARGIN
        )
        return response.identity

    def declare_server(
        self, service: str, listening_address: str, wait: float
    ) -> agent_pb2.DeclareServerResponse:
        """Tells the agent this process serves ``service`` on ``listening_address``; the
        answer has the service's security mode once the agent holds its policy. Raises
        grpc.RpcError when the agent cannot be asked."""
        request = agent_pb2.DeclareServerRequest(
            service=service, listening_address=listening_address
        )
        request.wait.FromNanoseconds(int(wait * 1e9))
        response: agent_pb2.DeclareServerResponse = self._stub.DeclareServer(
            request, timeout=wait + DECLARE_MARGIN
        )
        return response

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._wake_policy_waiters()
        call = self._watch_call
        if call is not None:
            call.cancel()
        with self._lock:
            retired, self._retired = self._retired, []
        for channel, timer in retired:
            timer.cancel()
            channel.close()
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
