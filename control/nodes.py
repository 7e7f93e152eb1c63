"""The nodes a control server knows: their ADS sessions, and for each node what outlives a
stream for the registration grace (its registrations, its local clients' reports, its
agent's health), as ``meshctl status`` shows them.

As the ADS sessions' :class:`~mesh_xds.callbacks.SessionCallbacks` it tells the
:class:`~control.registry.Registrations` when a node's stream is known (its first request
named the node) and when that stream ends, so a node's registrations live as long as its
streams plus the grace. Event-loop owned.
"""

from __future__ import annotations

from control.registry import Registrations
from mesh.v1 import admin_pb2
from mesh_xds.callbacks import SessionCallbacks
from mesh_xds.registry import SessionRegistry
from mesh_xds.session import Session


class ConnectedNodes(SessionCallbacks):
    def __init__(self, registrations: Registrations) -> None:
        self.registry = SessionRegistry()
        self.registrations = registrations
        self._known: set[str] = set()  # stream ids announced to the registrations

    def on_node(self, session: Session) -> None:
        if session.stream_id not in self._known:
            self._known.add(session.stream_id)
            self.registrations.connected(session.node_id)

    def on_close(self, session: Session) -> None:
        if session.stream_id in self._known:
            self._known.discard(session.stream_id)
            self.registrations.disconnected(session.node_id)

    def node_statuses(self) -> list[admin_pb2.NodeStatus]:
        """One status per connected stream, then one (with no stream) per node that has no
        stream but still has registrations or client reports (within its grace); each with
        the node's registrations and local clients."""
        statuses = self.registry.node_statuses()
        streaming = {status.node_id for status in statuses}
        for node_id in self.registrations.nodes():
            if node_id not in streaming:
                statuses.append(admin_pb2.NodeStatus(node_id=node_id))
        for status in statuses:
            status.registrations.extend(self.registrations.registrations(status.node_id))
            status.local_clients.extend(self.registrations.local_clients(status.node_id))
        return statuses
