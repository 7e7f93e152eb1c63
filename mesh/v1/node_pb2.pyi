import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mesh.v1 import traffic_pb2 as _traffic_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Registration(_message.Message):
    __slots__ = ("service", "address", "zone", "weight", "metadata", "draining", "labels")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    zone: str
    weight: int
    metadata: _containers.ScalarMap[str, str]
    draining: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., zone: _Optional[str] = ..., weight: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., draining: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetRegistrationsRequest(_message.Message):
    __slots__ = ("node_id", "registrations")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    registrations: _containers.RepeatedCompositeFieldContainer[Registration]
    def __init__(self, node_id: _Optional[str] = ..., registrations: _Optional[_Iterable[_Union[Registration, _Mapping]]] = ...) -> None: ...

class SetRegistrationsResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class LocalClientStatus(_message.Message):
    __slots__ = ("client_id", "type_url", "version_acked", "nack_version", "nack_message", "nack_time")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_ACKED_FIELD_NUMBER: _ClassVar[int]
    NACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    NACK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NACK_TIME_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    type_url: str
    version_acked: str
    nack_version: str
    nack_message: str
    nack_time: _timestamp_pb2.Timestamp
    def __init__(self, client_id: _Optional[str] = ..., type_url: _Optional[str] = ..., version_acked: _Optional[str] = ..., nack_version: _Optional[str] = ..., nack_message: _Optional[str] = ..., nack_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportClientStatusRequest(_message.Message):
    __slots__ = ("node_id", "clients", "health")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    clients: _containers.RepeatedCompositeFieldContainer[LocalClientStatus]
    health: NodeHealth
    def __init__(self, node_id: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[LocalClientStatus, _Mapping]]] = ..., health: _Optional[_Union[NodeHealth, _Mapping]] = ...) -> None: ...

class NodeHealth(_message.Message):
    __slots__ = ("status", "components", "breakers", "zone_priorities", "warnings")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    ZONE_PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    status: str
    components: _containers.RepeatedCompositeFieldContainer[ComponentHealth]
    breakers: _containers.RepeatedCompositeFieldContainer[OpenBreaker]
    zone_priorities: _containers.RepeatedCompositeFieldContainer[ZonePriority]
    warnings: _containers.RepeatedCompositeFieldContainer[ServiceWarning]
    def __init__(self, status: _Optional[str] = ..., components: _Optional[_Iterable[_Union[ComponentHealth, _Mapping]]] = ..., breakers: _Optional[_Iterable[_Union[OpenBreaker, _Mapping]]] = ..., zone_priorities: _Optional[_Iterable[_Union[ZonePriority, _Mapping]]] = ..., warnings: _Optional[_Iterable[_Union[ServiceWarning, _Mapping]]] = ...) -> None: ...

class ServiceWarning(_message.Message):
    __slots__ = ("service", "state", "reason", "burn_short", "burn_long", "since", "detail")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BURN_SHORT_FIELD_NUMBER: _ClassVar[int]
    BURN_LONG_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    service: str
    state: str
    reason: str
    burn_short: float
    burn_long: float
    since: _timestamp_pb2.Timestamp
    detail: str
    def __init__(self, service: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., burn_short: _Optional[float] = ..., burn_long: _Optional[float] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class ZonePriority(_message.Message):
    __slots__ = ("service", "zone", "priority")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    service: str
    zone: str
    priority: int
    def __init__(self, service: _Optional[str] = ..., zone: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class ComponentHealth(_message.Message):
    __slots__ = ("name", "state", "last_error", "restarts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    last_error: str
    restarts: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., restarts: _Optional[int] = ...) -> None: ...

class OpenBreaker(_message.Message):
    __slots__ = ("service", "state", "open_until", "reason", "since", "transitions")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    service: str
    state: str
    open_until: _timestamp_pb2.Timestamp
    reason: str
    since: _timestamp_pb2.Timestamp
    transitions: int
    def __init__(self, service: _Optional[str] = ..., state: _Optional[str] = ..., open_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transitions: _Optional[int] = ...) -> None: ...

class ReportClientStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportTrafficRequest(_message.Message):
    __slots__ = ("node_id", "start", "end", "latency_bounds_ms", "edges", "dropped_calls")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CALLS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    latency_bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    edges: _containers.RepeatedCompositeFieldContainer[_traffic_pb2.TrafficCounts]
    dropped_calls: int
    def __init__(self, node_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency_bounds_ms: _Optional[_Iterable[float]] = ..., edges: _Optional[_Iterable[_Union[_traffic_pb2.TrafficCounts, _Mapping]]] = ..., dropped_calls: _Optional[int] = ...) -> None: ...

class ReportTrafficResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class SignCertificateRequest(_message.Message):
    __slots__ = ("node_id", "csr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    csr: str
    def __init__(self, node_id: _Optional[str] = ..., csr: _Optional[str] = ...) -> None: ...

class SignCertificateResponse(_message.Message):
    __slots__ = ("spiffe_id", "certificate_chain", "trust_bundle", "not_before", "not_after")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    certificate_chain: str
    trust_bundle: str
    not_before: _timestamp_pb2.Timestamp
    not_after: _timestamp_pb2.Timestamp
    def __init__(self, spiffe_id: _Optional[str] = ..., certificate_chain: _Optional[str] = ..., trust_bundle: _Optional[str] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
