"""Tells the control server what only the agent knows: the endpoints this node registered,
what its local processes accepted or rejected, and the agent's health (its components, the
breakers that are not closed, and the early warnings raised: re-sent when one is raised,
cleared or changes reason, as breakers are on their transitions).

Each is a full set, re-sent after every (re)connect and on every change, to the control
server the upstream is connected to (the liveness of its ADS stream is what keeps the
registrations). Registrations made through the agent API persist in the state dir.

:class:`ReporterComponent` is the agent's ``reporter`` component: it follows the upstream's
connection, the breakers' transitions and every component's state, and hands the
:class:`Reporter` to the server (which registers endpoints and gives it the local sessions).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import structlog
from google.protobuf import json_format

from mesh.v1 import agent_pb2, node_pb2, node_pb2_grpc
from mesh_agent.components import AgentContext, ComponentState
from mesh_agent.daemon.breakers.service import BreakerHub
from mesh_agent.daemon.cache import atomic_write
from mesh_agent.daemon.roles import BREAKERS, REPORTER, UPSTREAM, BreakersRole, Upstream
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.backoff import Backoff
from mesh_core.errors import ComponentError
from mesh_core.signals import Signal
from mesh_core.tls import TlsFiles, aio_channel
from mesh_xds.registry import SessionRegistry

log = structlog.get_logger(__name__)
RECONNECT_BACKOFF = Backoff(base=0.2, cap=5.0)
REGISTRATIONS_FILE = "registrations.json"
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNKNOWN = "UNKNOWN"
BREAKER_STATES = {
    agent_pb2.BREAKER_STATE_OPEN: "open",
    agent_pb2.BREAKER_STATE_HALF_OPEN: "half_open",
}
HealthSource = Callable[[], node_pb2.NodeHealth]


def node_health(components: Iterable[ComponentState], breakers: BreakerHub) -> node_pb2.NodeHealth:
    """The agent's health: SERVING when every component runs, the breakers not closed, and
    the early warnings raised (with their burn rates as of the last evaluation)."""
    health = node_pb2.NodeHealth()
    for component in components:
        health.components.add(
            name=component.name,
            state=component.state,
            last_error=component.last_error or "",
            restarts=component.restarts,
        )
    if not health.components:
        health.status = UNKNOWN
    elif all(c.state == "running" for c in health.components):
        health.status = SERVING
    else:
        health.status = NOT_SERVING
    for status in breakers.statuses():
        state = BREAKER_STATES.get(status.state)
        if state is None:
            continue
        entry = health.breakers.add(
            service=status.service,
            state=state,
            reason=status.reason,
            transitions=status.transitions,
        )
        if status.HasField("open_until"):
            entry.open_until.CopyFrom(status.open_until)
        breaker = breakers.board.get(status.service)
        history = breaker.history if breaker is not None else []
        if history:
            entry.since.FromNanoseconds(int(history[-1].at * 1e9))
    health.warnings.extend(w.to_proto() for w in breakers.risk.warnings())
    return health


def registration_key(registration: node_pb2.Registration) -> tuple[str, str]:
    return registration.service, registration.address


class Reporter:
    """Event-loop owned. ``changed()`` and ``status_changed()`` schedule a send; ``run()``
    sends, a burst of changes at once. ``health`` gives the agent's health for each report;
    the local clients reported are those of the sessions given to :meth:`report_local`."""

    def __init__(
        self,
        node_id: str,
        state_dir: Path | None,
        static: Iterable[node_pb2.Registration] = (),
        *,
        backoff: Backoff = RECONNECT_BACKOFF,
        health: HealthSource | None = None,
        tls: TlsFiles | None = None,
        zone: str = "",
    ) -> None:
        """``zone`` is the node's: a registration without a zone of its own is in it."""
        self.tls = tls
        self.zone = zone
        self.node_id = node_id
        self.health_source = health
        self.zone_priorities: list[tuple[str, str, int]] = []
        """``(service, zone, priority)`` as the node is served, sent with its health."""
        self.local: SessionRegistry | None = None
        self.state_dir = state_dir
        self.backoff = backoff
        self.registrations: dict[tuple[str, str], node_pb2.Registration] = {
            registration_key(r): self._placed(r) for r in static
        }
        self._static = set(self.registrations)
        self.registrations_changed: Signal[[]] = Signal()
        """Emitted when a registration is added, changed or removed."""
        self.server = ""
        self._dirty = asyncio.Event()
        self._registrations_dirty = False
        self._status_dirty = False
        self._sent_status: bytes | None = None  # the last status report the server accepted
        self._load()

    # -- registrations -----------------------------------------------------------------------

    def _placed(self, registration: node_pb2.Registration) -> node_pb2.Registration:
        if not registration.zone and self.zone:
            registration.zone = self.zone
        return registration

    def register(self, registration: node_pb2.Registration) -> None:
        self.registrations[registration_key(registration)] = self._placed(registration)
        self._save()
        self.changed()
        self.registrations_changed.emit()

    def set_draining(self, service: str, address: str) -> bool:
        registration = self.registrations.get((service, address))
        if registration is None:
            return False
        registration.draining = True
        self._save()
        self.changed()
        return True

    def remove(self, service: str, address: str) -> bool:
        removed = self.registrations.pop((service, address), None) is not None
        if removed:
            self._save()
            self.changed()
            self.registrations_changed.emit()
        return removed

    def _path(self) -> Path | None:
        return self.state_dir / REGISTRATIONS_FILE if self.state_dir else None

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        dynamic = [
            json_format.MessageToDict(r, preserving_proto_field_name=True)
            for key, r in sorted(self.registrations.items())
            if key not in self._static
        ]
        atomic_write(path, json.dumps({"format": 1, "registrations": dynamic}).encode())

    def _load(self) -> None:
        path = self._path()
        if path is None or not path.exists():
            return
        try:
            document = json.loads(path.read_text())
            for body in document["registrations"]:
                registration = json_format.ParseDict(body, node_pb2.Registration())
                self.registrations.setdefault(
                    registration_key(registration), self._placed(registration)
                )
        except (OSError, ValueError, KeyError, TypeError, json_format.ParseError) as error:
            log.warning(
                "registrations file rejected; starting without it", path=str(path), error=str(error)
            )

    # -- local client status -------------------------------------------------------------------

    def report_local(self, sessions: SessionRegistry) -> None:
        """Reports what the clients of ``sessions`` (the local ADS server's) ACKed and
        NACKed from now on."""
        self.local = sessions
        self.status_changed()

    def client_statuses(self) -> list[node_pb2.LocalClientStatus]:
        statuses: list[node_pb2.LocalClientStatus] = []
        sessions = self.local.sessions() if self.local is not None else []
        for session in sessions:
            for state in session.types.values():
                status = node_pb2.LocalClientStatus(
                    client_id=session.node_id,
                    type_url=state.type_url,
                    version_acked=state.acked_version,
                )
                if state.last_nack is not None:
                    status.nack_version = state.last_nack.version
                    status.nack_message = state.last_nack.message
                    status.nack_time.FromNanoseconds(int(state.last_nack.at * 1e9))
                statuses.append(status)
        return statuses

    # -- sending -----------------------------------------------------------------------------

    def status_request(self) -> node_pb2.ReportClientStatusRequest:
        request = node_pb2.ReportClientStatusRequest(
            node_id=self.node_id, clients=self.client_statuses()
        )
        if self.health_source is not None:
            request.health.CopyFrom(self.health_source())
            for service, zone, priority in self.zone_priorities:
                request.health.zone_priorities.add(service=service, zone=zone, priority=priority)
        return request

    def changed(self) -> None:
        """Registrations or local clients changed: send everything."""
        self._registrations_dirty = True
        self._status_dirty = True
        self._dirty.set()

    def status_changed(self) -> None:
        """Local clients or the agent's health changed: send the status report."""
        self._status_dirty = True
        self._dirty.set()

    def connected(self, server: str) -> None:
        self.server = server
        self._sent_status = None
        self.changed()

    def disconnected(self) -> None:
        self.server = ""

    async def run(self) -> None:
        delays = self.backoff.delays()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce a burst of changes
            self._dirty.clear()
            server = self.server
            if not server:
                continue  # sent on the next connect
            registrations, status = self._registrations_dirty, self._status_dirty
            self._registrations_dirty = self._status_dirty = False
            try:
                await self._send(server, registrations, status)
                delays = self.backoff.delays()
            except grpc.aio.AioRpcError as error:
                self._registrations_dirty |= registrations
                self._status_dirty |= status
                log.warning(
                    "report to control server failed",
                    server=server,
                    code=error.code().name,
                    details=error.details(),
                )
                await asyncio.sleep(next(delays))
                self._dirty.set()

    async def _send(self, server: str, registrations: bool, status: bool) -> None:
        request = self.status_request() if status else None
        body = request.SerializeToString(deterministic=True) if request is not None else None
        if body is not None and body == self._sent_status:
            request = None  # the server has this report already
        if not registrations and request is None:
            return
        async with aio_channel(server, self.tls) as channel:
            stub = node_pb2_grpc.NodeServiceStub(channel)
            if registrations:
                await stub.SetRegistrations(
                    node_pb2.SetRegistrationsRequest(
                        node_id=self.node_id,
                        registrations=[r for _, r in sorted(self.registrations.items())],
                    ),
                    timeout=5,
                )
            if request is not None:
                self._sent_status = None
                await stub.ReportClientStatus(request, timeout=5)
                if server == self.server:
                    self._sent_status = body


class ReporterComponent:
    """The built-in reporter; the :class:`Reporter` is made at the first start and kept
    across restarts. It reports to the control server the upstream is connected to."""

    name = REPORTER
    requires = (UPSTREAM, BREAKERS)

    def __init__(self) -> None:
        self._reporter: Reporter | None = None

    @property
    def reporter(self) -> Reporter:
        if self._reporter is None:
            raise ComponentError("the reporter is made when the reporter component starts")
        return self._reporter

    async def start(self, ctx: AgentContext) -> None:
        upstream = ctx.require(UPSTREAM, Upstream)
        hub = ctx.require(BREAKERS, BreakersRole).hub
        if self._reporter is None:
            settings = ctx.setting(SETTINGS, AgentSettings)
            self._reporter = Reporter(
                settings.node_id,
                settings.state_dir,
                settings.registrations,
                tls=settings.tls,
                zone=settings.zone,
            )
        reporter = self._reporter
        reporter.health_source = lambda: node_health(ctx.statuses(), hub)
        ctx.connect(upstream.on_connect, reporter.connected)
        ctx.connect(upstream.on_disconnect, reporter.disconnected)
        ctx.connect(hub.board.transitions, lambda transition: reporter.status_changed())
        ctx.connect(hub.risk.changes, lambda change: reporter.status_changed())
        ctx.connect(ctx.component_changed, lambda name, serving: reporter.status_changed())
        if upstream.connected_to:  # connected while this component was down
            reporter.connected(upstream.connected_to)

    async def run(self) -> None:
        await self.reporter.run()

    async def stop(self) -> None:
        return None


__all__ = ["Reporter", "ReporterComponent", "node_health", "registration_key"]
