"""The sessions of one ADS server, for status and CSDS: what each stream was sent and whether
its client ACKed it. Event-loop owned."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import timestamp_pb2

from mesh.v1 import admin_pb2
from mesh_xds.session import Session, TypeState
from mesh_xds.types import PUSH_ORDER


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class SessionRegistry:
    """Every open session of a server, from the start of its stream to its end (the servicer
    adds and removes them)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def add(self, session: Session) -> None:
        self._sessions[session.stream_id] = session

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.stream_id, None)

    def sessions(self) -> list[Session]:
        """The open sessions, by node id then stream id."""
        return sorted(self._sessions.values(), key=lambda s: (s.node_id, s.stream_id))

    def node_statuses(self) -> list[admin_pb2.NodeStatus]:
        """One status per open stream whose node is known."""
        return [self.node_status(s) for s in self.sessions() if s.node is not None]

    @staticmethod
    def type_status(state: TypeState) -> admin_pb2.TypeStatus:
        status = admin_pb2.TypeStatus(
            type_url=state.type_url,
            version_sent=state.sent_version,
            version_acked=state.acked_version,
            responses_sent=state.responses,
            resource_names=sorted(state.names),
            wildcard=state.wildcard,
        )
        if state.last_nack is not None:
            status.last_nack.version = state.last_nack.version
            status.last_nack.message = state.last_nack.message
            status.last_nack.time.CopyFrom(timestamp(state.last_nack.at))
        return status

    def node_status(self, session: Session) -> admin_pb2.NodeStatus:
        assert session.node is not None
        ordered = sorted(
            session.types.values(),
            key=lambda t: PUSH_ORDER.index(t.type_url) if t.type_url in PUSH_ORDER else 99,
        )
        status = admin_pb2.NodeStatus(
            node_id=session.node.id,
            zone=session.node.locality.zone,
            user_agent=f"{session.node.user_agent_name} {session.node.user_agent_version}".strip(),
            peer=session.peer,
            connected_since=timestamp(session.connected_at),
            types=[self.type_status(t) for t in ordered],
            snapshot_id=session.snapshot.id if session.snapshot is not None else "",
            stream_id=session.stream_id,
        )
        return status

    def client_configs(self) -> Iterator[csds_pb2.ClientConfig]:
        """What each connected node was sent, and whether it ACKed it, as CSDS reports it."""
        for session in self.sessions():
            if session.node is None:
                continue
            config = csds_pb2.ClientConfig(node=session.node)
            snapshot = session.snapshot
            for state in session.types.values():
                for name in sorted(state.sent or {}):
                    entry = config.generic_xds_configs.add(
                        type_url=state.type_url, name=name, version_info=state.sent_version
                    )
                    resource = (
                        snapshot.resources.get(state.type_url, {}).get(name) if snapshot else None
                    )
                    if resource is not None and resource.digest == (state.sent or {}).get(name):
                        entry.xds_config.CopyFrom(resource.packed)
                    nacked = (
                        state.last_nack is not None
                        and state.last_nack.version == state.sent_version
                    )
                    if nacked and state.last_nack is not None:
                        entry.client_status = config_dump_shared_pb2.NACKED
                        entry.error_state.details = state.last_nack.message
                    elif state.acked_version == state.sent_version:
                        entry.client_status = config_dump_shared_pb2.ACKED
                    else:
                        entry.client_status = config_dump_shared_pb2.REQUESTED
            yield config
