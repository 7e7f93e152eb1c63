import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mesh.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("registration",)
    REGISTRATION_FIELD_NUMBER: _ClassVar[int]
    registration: _node_pb2.Registration
    def __init__(self, registration: _Optional[_Union[_node_pb2.Registration, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("service", "address", "drain")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    drain: _duration_pb2.Duration
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., drain: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAgentStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAgentStatusResponse(_message.Message):
    __slots__ = ("node_id", "upstream", "connected", "types", "registrations", "components", "endpoint_health", "config_updated")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_HEALTH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_UPDATED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    upstream: str
    connected: bool
    types: _containers.RepeatedCompositeFieldContainer[UpstreamTypeStatus]
    registrations: _containers.RepeatedCompositeFieldContainer[_node_pb2.Registration]
    components: _containers.RepeatedCompositeFieldContainer[ComponentStatus]
    endpoint_health: _containers.RepeatedCompositeFieldContainer[EndpointHealth]
    config_updated: _timestamp_pb2.Timestamp
    def __init__(self, node_id: _Optional[str] = ..., upstream: _Optional[str] = ..., connected: _Optional[bool] = ..., types: _Optional[_Iterable[_Union[UpstreamTypeStatus, _Mapping]]] = ..., registrations: _Optional[_Iterable[_Union[_node_pb2.Registration, _Mapping]]] = ..., components: _Optional[_Iterable[_Union[ComponentStatus, _Mapping]]] = ..., endpoint_health: _Optional[_Iterable[_Union[EndpointHealth, _Mapping]]] = ..., config_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpstreamTypeStatus(_message.Message):
    __slots__ = ("type_url", "version_acked", "responses_received", "resources", "last_nack")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    VERSION_ACKED_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    version_acked: str
    responses_received: int
    resources: int
    last_nack: str
    def __init__(self, type_url: _Optional[str] = ..., version_acked: _Optional[str] = ..., responses_received: _Optional[int] = ..., resources: _Optional[int] = ..., last_nack: _Optional[str] = ...) -> None: ...

class ComponentStatus(_message.Message):
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

class EndpointHealth(_message.Message):
    __slots__ = ("service", "address", "state", "applied")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    service: str
    address: str
    state: str
    applied: bool
    def __init__(self, service: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., applied: _Optional[bool] = ...) -> None: ...
