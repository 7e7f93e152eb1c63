import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mesh.v1 import config_pb2 as _config_pb2
from mesh.v1 import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_STATE_CLOSED: _ClassVar[BreakerState]
    BREAKER_STATE_OPEN: _ClassVar[BreakerState]
    BREAKER_STATE_HALF_OPEN: _ClassVar[BreakerState]
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_STATE_CLOSED: BreakerState
BREAKER_STATE_OPEN: BreakerState
BREAKER_STATE_HALF_OPEN: BreakerState

class HoldIdentityRequest(_message.Message):
    __slots__ = ("service", "wait")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    service: str
    wait: _duration_pb2.Duration
    def __init__(self, service: _Optional[str] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HoldIdentityResponse(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: IdentityStatus
    def __init__(self, identity: _Optional[_Union[IdentityStatus, _Mapping]] = ...) -> None: ...

class DeclareServerRequest(_message.Message):
    __slots__ = ("service", "listening_address", "wait")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    LISTENING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    service: str
    listening_address: str
    wait: _duration_pb2.Duration
    def __init__(self, service: _Optional[str] = ..., listening_address: _Optional[str] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeclareServerResponse(_message.Message):
    __slots__ = ("listener_name", "mode", "has_identity")
    LISTENER_NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HAS_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    listener_name: str
    mode: str
    has_identity: bool
    def __init__(self, listener_name: _Optional[str] = ..., mode: _Optional[str] = ..., has_identity: _Optional[bool] = ...) -> None: ...

class CallOutcome(_message.Message):
    __slots__ = ("service", "code", "latency_us", "end_unix_ms", "probe")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    END_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    service: str
    code: str
    latency_us: int
    end_unix_ms: int
    probe: bool
    def __init__(self, service: _Optional[str] = ..., code: _Optional[str] = ..., latency_us: _Optional[int] = ..., end_unix_ms: _Optional[int] = ..., probe: _Optional[bool] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("client_id", "outcomes", "caller")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    outcomes: _containers.RepeatedCompositeFieldContainer[CallOutcome]
    caller: str
    def __init__(self, client_id: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[CallOutcome, _Mapping]]] = ..., caller: _Optional[str] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class BreakerStatus(_message.Message):
    __slots__ = ("service", "state", "open_until", "reason", "enabled", "transitions")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    service: str
    state: BreakerState
    open_until: _timestamp_pb2.Timestamp
    reason: str
    enabled: bool
    transitions: int
    def __init__(self, service: _Optional[str] = ..., state: _Optional[_Union[BreakerState, str]] = ..., open_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., enabled: _Optional[bool] = ..., transitions: _Optional[int] = ...) -> None: ...

class WatchBreakersRequest(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, services: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchBreakersResponse(_message.Message):
    __slots__ = ("breakers", "call_policies")
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    CALL_POLICIES_FIELD_NUMBER: _ClassVar[int]
    breakers: _containers.RepeatedCompositeFieldContainer[BreakerStatus]
    call_policies: _containers.RepeatedCompositeFieldContainer[CallPolicy]
    def __init__(self, breakers: _Optional[_Iterable[_Union[BreakerStatus, _Mapping]]] = ..., call_policies: _Optional[_Iterable[_Union[CallPolicy, _Mapping]]] = ...) -> None: ...

class CallPolicy(_message.Message):
    __slots__ = ("service", "timeout", "routes", "authorization")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    service: str
    timeout: _duration_pb2.Duration
    routes: _containers.RepeatedCompositeFieldContainer[RouteTimeout]
    authorization: _containers.RepeatedCompositeFieldContainer[_config_pb2.AuthorizationRule]
    def __init__(self, service: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., routes: _Optional[_Iterable[_Union[RouteTimeout, _Mapping]]] = ..., authorization: _Optional[_Iterable[_Union[_config_pb2.AuthorizationRule, _Mapping]]] = ...) -> None: ...

class RouteTimeout(_message.Message):
    __slots__ = ("match", "timeout")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    match: _config_pb2.RouteMatch
    timeout: _duration_pb2.Duration
    def __init__(self, match: _Optional[_Union[_config_pb2.RouteMatch, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AcquirePermitRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class AcquirePermitResponse(_message.Message):
    __slots__ = ("granted", "status")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    status: BreakerStatus
    def __init__(self, granted: _Optional[bool] = ..., status: _Optional[_Union[BreakerStatus, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("node_id", "upstream", "connected", "types", "registrations", "components", "endpoint_health", "config_updated", "breakers", "zone", "zone_priorities", "identities", "servers", "warnings")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_HEALTH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_UPDATED_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    ZONE_PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    upstream: str
    connected: bool
    types: _containers.RepeatedCompositeFieldContainer[UpstreamTypeStatus]
    registrations: _containers.RepeatedCompositeFieldContainer[_node_pb2.Registration]
    components: _containers.RepeatedCompositeFieldContainer[ComponentStatus]
    endpoint_health: _containers.RepeatedCompositeFieldContainer[EndpointHealth]
    config_updated: _timestamp_pb2.Timestamp
    breakers: _containers.RepeatedCompositeFieldContainer[BreakerStatus]
    zone: str
    zone_priorities: _containers.RepeatedCompositeFieldContainer[_node_pb2.ZonePriority]
    identities: _containers.RepeatedCompositeFieldContainer[IdentityStatus]
    servers: _containers.RepeatedCompositeFieldContainer[DeclaredServer]
    warnings: _containers.RepeatedCompositeFieldContainer[_node_pb2.ServiceWarning]
    def __init__(self, node_id: _Optional[str] = ..., upstream: _Optional[str] = ..., connected: _Optional[bool] = ..., types: _Optional[_Iterable[_Union[UpstreamTypeStatus, _Mapping]]] = ..., registrations: _Optional[_Iterable[_Union[_node_pb2.Registration, _Mapping]]] = ..., components: _Optional[_Iterable[_Union[ComponentStatus, _Mapping]]] = ..., endpoint_health: _Optional[_Iterable[_Union[EndpointHealth, _Mapping]]] = ..., config_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., breakers: _Optional[_Iterable[_Union[BreakerStatus, _Mapping]]] = ..., zone: _Optional[str] = ..., zone_priorities: _Optional[_Iterable[_Union[_node_pb2.ZonePriority, _Mapping]]] = ..., identities: _Optional[_Iterable[_Union[IdentityStatus, _Mapping]]] = ..., servers: _Optional[_Iterable[_Union[DeclaredServer, _Mapping]]] = ..., warnings: _Optional[_Iterable[_Union[_node_pb2.ServiceWarning, _Mapping]]] = ...) -> None: ...

class DeclaredServer(_message.Message):
    __slots__ = ("service", "listening_address", "listener_name", "mode")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    LISTENING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LISTENER_NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    service: str
    listening_address: str
    listener_name: str
    mode: str
    def __init__(self, service: _Optional[str] = ..., listening_address: _Optional[str] = ..., listener_name: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class IdentityStatus(_message.Message):
    __slots__ = ("service", "spiffe_id", "source", "certificate_file", "private_key_file", "ca_certificate_file", "not_after", "renew_at", "last_error", "updated", "refused")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FILE_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FILE_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_FILE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    RENEW_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    service: str
    spiffe_id: str
    source: str
    certificate_file: str
    private_key_file: str
    ca_certificate_file: str
    not_after: _timestamp_pb2.Timestamp
    renew_at: _timestamp_pb2.Timestamp
    last_error: str
    updated: _timestamp_pb2.Timestamp
    refused: bool
    def __init__(self, service: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., source: _Optional[str] = ..., certificate_file: _Optional[str] = ..., private_key_file: _Optional[str] = ..., ca_certificate_file: _Optional[str] = ..., not_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., renew_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., refused: _Optional[bool] = ...) -> None: ...

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
