import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mesh.v1 import config_pb2 as _config_pb2
from mesh.v1 import node_pb2 as _node_pb2
from mesh.v1 import traffic_pb2 as _traffic_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyServicesRequest(_message.Message):
    __slots__ = ("services", "if_revision", "message")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    IF_REVISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[_config_pb2.Service]
    if_revision: int
    message: str
    def __init__(self, services: _Optional[_Iterable[_Union[_config_pb2.Service, _Mapping]]] = ..., if_revision: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ApplyServicesResponse(_message.Message):
    __slots__ = ("services", "revision")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[AppliedService]
    revision: int
    def __init__(self, services: _Optional[_Iterable[_Union[AppliedService, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class AppliedService(_message.Message):
    __slots__ = ("name", "revision", "changed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    changed: bool
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetServicesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetServicesResponse(_message.Message):
    __slots__ = ("services", "revision")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[StoredService]
    revision: int
    def __init__(self, services: _Optional[_Iterable[_Union[StoredService, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class StoredService(_message.Message):
    __slots__ = ("service", "revision")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    service: _config_pb2.Service
    revision: int
    def __init__(self, service: _Optional[_Union[_config_pb2.Service, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name", "if_revision", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IF_REVISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    if_revision: int
    message: str
    def __init__(self, name: _Optional[str] = ..., if_revision: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class DeleteServiceResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("nodes", "store_revision", "snapshot_revision", "store_problems", "server_id")
    NODES_FIELD_NUMBER: _ClassVar[int]
    STORE_REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_REVISION_FIELD_NUMBER: _ClassVar[int]
    STORE_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    store_revision: int
    snapshot_revision: int
    store_problems: _containers.RepeatedCompositeFieldContainer[StoreProblem]
    server_id: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., store_revision: _Optional[int] = ..., snapshot_revision: _Optional[int] = ..., store_problems: _Optional[_Iterable[_Union[StoreProblem, _Mapping]]] = ..., server_id: _Optional[str] = ...) -> None: ...

class StoreProblem(_message.Message):
    __slots__ = ("source", "message")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    source: str
    message: str
    def __init__(self, source: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "zone", "user_agent", "peer", "connected_since", "types", "snapshot_id", "stream_id", "local_clients", "registrations", "server_id", "health")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    zone: str
    user_agent: str
    peer: str
    connected_since: _timestamp_pb2.Timestamp
    types: _containers.RepeatedCompositeFieldContainer[TypeStatus]
    snapshot_id: str
    stream_id: str
    local_clients: _containers.RepeatedCompositeFieldContainer[_node_pb2.LocalClientStatus]
    registrations: _containers.RepeatedCompositeFieldContainer[_node_pb2.Registration]
    server_id: str
    health: _node_pb2.NodeHealth
    def __init__(self, node_id: _Optional[str] = ..., zone: _Optional[str] = ..., user_agent: _Optional[str] = ..., peer: _Optional[str] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., types: _Optional[_Iterable[_Union[TypeStatus, _Mapping]]] = ..., snapshot_id: _Optional[str] = ..., stream_id: _Optional[str] = ..., local_clients: _Optional[_Iterable[_Union[_node_pb2.LocalClientStatus, _Mapping]]] = ..., registrations: _Optional[_Iterable[_Union[_node_pb2.Registration, _Mapping]]] = ..., server_id: _Optional[str] = ..., health: _Optional[_Union[_node_pb2.NodeHealth, _Mapping]] = ...) -> None: ...

class TypeStatus(_message.Message):
    __slots__ = ("type_url", "version_sent", "version_acked", "responses_sent", "last_nack", "resource_names", "wildcard")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_SENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_ACKED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_SENT_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_NAMES_FIELD_NUMBER: _ClassVar[int]
    WILDCARD_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_sent: str
    version_acked: str
    responses_sent: int
    last_nack: Nack
    resource_names: _containers.RepeatedScalarFieldContainer[str]
    wildcard: bool
    def __init__(self, type_url: _Optional[str] = ..., version_sent: _Optional[str] = ..., version_acked: _Optional[str] = ..., responses_sent: _Optional[int] = ..., last_nack: _Optional[_Union[Nack, _Mapping]] = ..., resource_names: _Optional[_Iterable[str]] = ..., wildcard: _Optional[bool] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "message", "time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    version: str
    message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[str] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("name", "revision", "time", "who", "message", "action", "service", "created", "rollback_of")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_OF_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    time: _timestamp_pb2.Timestamp
    who: str
    message: str
    action: str
    service: _config_pb2.Service
    created: bool
    rollback_of: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., who: _Optional[str] = ..., message: _Optional[str] = ..., action: _Optional[str] = ..., service: _Optional[_Union[_config_pb2.Service, _Mapping]] = ..., created: _Optional[bool] = ..., rollback_of: _Optional[int] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("entries", "revision")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    revision: int
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class RollbackServiceRequest(_message.Message):
    __slots__ = ("name", "to_revision", "if_revision", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    IF_REVISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_revision: int
    if_revision: int
    message: str
    def __init__(self, name: _Optional[str] = ..., to_revision: _Optional[int] = ..., if_revision: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class RollbackServiceResponse(_message.Message):
    __slots__ = ("service", "revision")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    service: AppliedService
    revision: int
    def __init__(self, service: _Optional[_Union[AppliedService, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time", "who", "peer", "action", "services", "outcome", "reason", "detail", "revision", "message", "server_id")
    TIME_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    who: str
    peer: str
    action: str
    services: _containers.RepeatedScalarFieldContainer[str]
    outcome: str
    reason: str
    detail: str
    revision: int
    message: str
    server_id: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., who: _Optional[str] = ..., peer: _Optional[str] = ..., action: _Optional[str] = ..., services: _Optional[_Iterable[str]] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., revision: _Optional[int] = ..., message: _Optional[str] = ..., server_id: _Optional[str] = ...) -> None: ...

class GetAuditRequest(_message.Message):
    __slots__ = ("since", "service")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    service: str
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., service: _Optional[str] = ...) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class GetTrafficRequest(_message.Message):
    __slots__ = ("service", "caller")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    service: str
    caller: str
    def __init__(self, service: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class GetTrafficResponse(_message.Message):
    __slots__ = ("edges", "window_seconds", "time", "server_id", "latency_bounds_ms", "dropped_edges", "dropped_calls")
    EDGES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EDGES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CALLS_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[_traffic_pb2.TrafficEdge]
    window_seconds: float
    time: _timestamp_pb2.Timestamp
    server_id: str
    latency_bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    dropped_edges: int
    dropped_calls: int
    def __init__(self, edges: _Optional[_Iterable[_Union[_traffic_pb2.TrafficEdge, _Mapping]]] = ..., window_seconds: _Optional[float] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., server_id: _Optional[str] = ..., latency_bounds_ms: _Optional[_Iterable[float]] = ..., dropped_edges: _Optional[int] = ..., dropped_calls: _Optional[int] = ...) -> None: ...
