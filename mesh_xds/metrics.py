"""OpenTelemetry instruments of the xDS servers: the control server's ADS streams and the
agent's local ADS server, which run the same protocol code.

Only the OpenTelemetry API is used here. Instruments come from ``metrics.get_meter`` unless a
``Meter`` is given, so they record into whatever ``MeterProvider`` the process installs,
before or after they are created, and cost next to nothing when none is.

========================================= ============ ========================================
metric                                    unit         attributes
========================================= ============ ========================================
``mesh.xds.pushes`` (counter)             {response}   ``mesh.xds.type``, ``mesh.xds.server``
``mesh.xds.acks`` (counter)               {request}    ``mesh.xds.type``, ``mesh.xds.server``
``mesh.xds.nacks`` (counter)              {request}    ``mesh.xds.type``, ``mesh.xds.server``
``mesh.xds.connected_nodes`` (up-down)    {node}       ``mesh.xds.server``
``mesh.xds.convergence.duration`` (hist.) s            ``mesh.xds.type``
========================================= ============ ========================================
"""

from __future__ import annotations

from typing import Final

from opentelemetry import metrics
from opentelemetry.util.types import Attributes

from mesh_xds import __version__
from mesh_xds.callbacks import SessionCallbacks
from mesh_xds.session import Session, TypeState
from mesh_xds.types import PUSH_ORDER, TypeUrl

METER_NAME: Final = "mesh.control"
CONTROL: Final = "control"
AGENT: Final = "agent"

PUSHES: Final = "mesh.xds.pushes"
ACKS: Final = "mesh.xds.acks"
NACKS: Final = "mesh.xds.nacks"
CONNECTED_NODES: Final = "mesh.xds.connected_nodes"
CONVERGENCE: Final = "mesh.xds.convergence.duration"

XDS_TYPE: Final = "mesh.xds.type"
XDS_SERVER: Final = "mesh.xds.server"

CONVERGENCE_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; a push waits for the publisher's debounce (0.1 s to 1 s by default)."""


def control_meter() -> metrics.Meter:
    """The control package's meter on the process's global ``MeterProvider``."""
    return metrics.get_meter(METER_NAME, __version__)


def type_name(type_url: TypeUrl) -> str:
    """The message name of a type URL: ``Listener``, ``ClusterLoadAssignment``, ..."""
    return type_url.rpartition("/")[2].rpartition(".")[2]


class XdsMetrics(SessionCallbacks):
    """The instruments of one ADS server. ``server`` is the ``mesh.xds.server`` attribute:
    ``control`` or ``agent``. ``convergence`` (default: on the control server only) says
    whether ACKs record ``mesh.xds.convergence.duration``.

    The counters start at zero for every type, and ``mesh.xds.connected_nodes`` at zero, as
    soon as a real ``MeterProvider`` is installed: a scrape shows every series from the
    start, so the first NACK is a step from 0 that ``rate()`` and ``increase()`` see, not a
    series that appears with its first value.

    As the sessions' :class:`~mesh_xds.callbacks.SessionCallbacks` it counts every response
    sent, ACK and NACK, records the convergence time an ACK carries
    (``TypeState.converged_in``), and keeps ``mesh.xds.connected_nodes`` as streams open and
    close.

    Convergence time is counted only for a version pushed because the config changed, to a
    stream already subscribed to its type: from the earliest store (or registration) change
    coalesced into that publication, as this server saw it, to the node's ACK of that
    version, once per node, type and version. A node that connects later and is sent the
    version in answer to its request is not counted, nor is a response to a subscription
    change, so no measurement spans time the node was not waiting for the change.
    """

    def __init__(
        self,
        server: str,
        meter: metrics.Meter | None = None,
        *,
        convergence: bool | None = None,
    ) -> None:
        m = meter if meter is not None else control_meter()
        self.server = server
        self.records_convergence = server == CONTROL if convergence is None else convergence
        self.pushes = m.create_counter(
            PUSHES, unit="{response}", description="DiscoveryResponses sent on ADS streams."
        )
        self.acks = m.create_counter(
            ACKS, unit="{request}", description="DiscoveryRequests that ACKed a response."
        )
        self.nacks = m.create_counter(
            NACKS, unit="{request}", description="DiscoveryRequests that NACKed a response."
        )
        self.connected_nodes = m.create_up_down_counter(
            CONNECTED_NODES, unit="{node}", description="ADS streams currently open."
        )
        self.convergence = m.create_histogram(
            CONVERGENCE,
            unit="s",
            description=(
                "Time from the config change behind a version to a connected node's ACK of it."
            ),
            explicit_bucket_boundaries_advisory=CONVERGENCE_BUCKETS,
        )
        self._server_attributes: Attributes = {XDS_SERVER: server}
        self._attributes: dict[TypeUrl, Attributes] = {}
        self._type_attributes: dict[TypeUrl, Attributes] = {}
        for type_url in PUSH_ORDER:
            for counter in (self.pushes, self.acks, self.nacks):
                counter.add(0, self._for(type_url))
        self.connected_nodes.add(0, self._server_attributes)

    def _for(self, type_url: TypeUrl) -> Attributes:
        attributes = self._attributes.get(type_url)
        if attributes is None:
            attributes = {XDS_TYPE: type_name(type_url), XDS_SERVER: self.server}
            self._attributes[type_url] = attributes
        return attributes

    def on_send(self, session: Session, state: TypeState) -> None:
        self.pushes.add(1, self._for(state.type_url))

    def on_ack(self, session: Session, state: TypeState) -> None:
        self.acks.add(1, self._for(state.type_url))
        if state.converged_in is not None and self.records_convergence:
            attributes = self._type_attributes.get(state.type_url)
            if attributes is None:
                attributes = {XDS_TYPE: type_name(state.type_url)}
                self._type_attributes[state.type_url] = attributes
            self.convergence.record(state.converged_in, attributes)

    def on_nack(self, session: Session, state: TypeState) -> None:
        self.nacks.add(1, self._for(state.type_url))

    def on_open(self, session: Session) -> None:
        self.connected_nodes.add(1, self._server_attributes)

    def on_close(self, session: Session) -> None:
        self.connected_nodes.add(-1, self._server_attributes)


__all__ = ["AGENT", "CONTROL", "XdsMetrics", "control_meter", "type_name"]
