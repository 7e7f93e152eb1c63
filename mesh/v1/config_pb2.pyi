import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Service(_message.Message):
    __slots__ = ("name", "endpoints", "policy", "subsets", "routes", "security")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SUBSETS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    policy: Policy
    subsets: _containers.RepeatedCompositeFieldContainer[Subset]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    security: ServiceSecurity
    def __init__(self, name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., subsets: _Optional[_Iterable[_Union[Subset, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., security: _Optional[_Union[ServiceSecurity, _Mapping]] = ...) -> None: ...

class ServiceSecurity(_message.Message):
    __slots__ = ("hosts", "mode", "authorization")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZATION_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    authorization: _containers.RepeatedCompositeFieldContainer[AuthorizationRule]
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., authorization: _Optional[_Iterable[_Union[AuthorizationRule, _Mapping]]] = ...) -> None: ...

class AuthorizationRule(_message.Message):
    __slots__ = ("name", "action", "callers", "methods", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeaderMatch
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeaderMatch, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CALLERS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    callers: _containers.RepeatedScalarFieldContainer[str]
    methods: _containers.RepeatedScalarFieldContainer[str]
    headers: _containers.MessageMap[str, HeaderMatch]
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ..., callers: _Optional[_Iterable[str]] = ..., methods: _Optional[_Iterable[str]] = ..., headers: _Optional[_Mapping[str, HeaderMatch]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("address", "zone", "weight", "metadata", "node_id", "draining", "labels")
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
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    address: str
    zone: str
    weight: int
    metadata: _containers.ScalarMap[str, str]
    node_id: str
    draining: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., zone: _Optional[str] = ..., weight: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., node_id: _Optional[str] = ..., draining: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Subset(_message.Message):
    __slots__ = ("name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("name", "match", "to", "policy", "fault")
    class ToEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: RouteMatch
    to: _containers.ScalarMap[str, int]
    policy: RoutePolicy
    fault: FaultPolicy
    def __init__(self, name: _Optional[str] = ..., match: _Optional[_Union[RouteMatch, _Mapping]] = ..., to: _Optional[_Mapping[str, int]] = ..., policy: _Optional[_Union[RoutePolicy, _Mapping]] = ..., fault: _Optional[_Union[FaultPolicy, _Mapping]] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("method", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeaderMatch
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeaderMatch, _Mapping]] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    method: str
    headers: _containers.MessageMap[str, HeaderMatch]
    def __init__(self, method: _Optional[str] = ..., headers: _Optional[_Mapping[str, HeaderMatch]] = ...) -> None: ...

class HeaderMatch(_message.Message):
    __slots__ = ("exact", "prefix", "regex", "present", "invert")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    regex: str
    present: bool
    invert: bool
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ..., regex: _Optional[str] = ..., present: _Optional[bool] = ..., invert: _Optional[bool] = ...) -> None: ...

class RoutePolicy(_message.Message):
    __slots__ = ("timeout", "retry")
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    timeout: _duration_pb2.Duration
    retry: RetryPolicy
    def __init__(self, timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ...) -> None: ...

class FaultPolicy(_message.Message):
    __slots__ = ("delay", "abort", "max_active_faults")
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    delay: FaultDelay
    abort: FaultAbort
    max_active_faults: int
    def __init__(self, delay: _Optional[_Union[FaultDelay, _Mapping]] = ..., abort: _Optional[_Union[FaultAbort, _Mapping]] = ..., max_active_faults: _Optional[int] = ...) -> None: ...

class FaultDelay(_message.Message):
    __slots__ = ("fixed", "percent")
    FIXED_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    fixed: _duration_pb2.Duration
    percent: float
    def __init__(self, fixed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., percent: _Optional[float] = ...) -> None: ...

class FaultAbort(_message.Message):
    __slots__ = ("status", "percent")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    status: str
    percent: float
    def __init__(self, status: _Optional[str] = ..., percent: _Optional[float] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("timeout", "retry", "circuit_breaker", "outlier_detection", "health_check", "lb", "hash", "locality", "slo")
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_BREAKER_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    LB_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    timeout: _duration_pb2.Duration
    retry: RetryPolicy
    circuit_breaker: CircuitBreakerPolicy
    outlier_detection: OutlierDetectionPolicy
    health_check: HealthCheckPolicy
    lb: str
    hash: HashPolicy
    locality: LocalityPolicy
    slo: SloPolicy
    def __init__(self, timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., circuit_breaker: _Optional[_Union[CircuitBreakerPolicy, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetectionPolicy, _Mapping]] = ..., health_check: _Optional[_Union[HealthCheckPolicy, _Mapping]] = ..., lb: _Optional[str] = ..., hash: _Optional[_Union[HashPolicy, _Mapping]] = ..., locality: _Optional[_Union[LocalityPolicy, _Mapping]] = ..., slo: _Optional[_Union[SloPolicy, _Mapping]] = ...) -> None: ...

class SloPolicy(_message.Message):
    __slots__ = ("success", "latency", "burn")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    BURN_FIELD_NUMBER: _ClassVar[int]
    success: float
    latency: LatencyObjective
    burn: BurnRateAlert
    def __init__(self, success: _Optional[float] = ..., latency: _Optional[_Union[LatencyObjective, _Mapping]] = ..., burn: _Optional[_Union[BurnRateAlert, _Mapping]] = ...) -> None: ...

class LatencyObjective(_message.Message):
    __slots__ = ("p50", "p90", "p95", "p99", "p999")
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    P99_FIELD_NUMBER: _ClassVar[int]
    P999_FIELD_NUMBER: _ClassVar[int]
    p50: _duration_pb2.Duration
    p90: _duration_pb2.Duration
    p95: _duration_pb2.Duration
    p99: _duration_pb2.Duration
    p999: _duration_pb2.Duration
    def __init__(self, p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p90: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p99: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., p999: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BurnRateAlert(_message.Message):
    __slots__ = ("short_window", "long_window", "threshold")
    SHORT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LONG_WINDOW_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    short_window: _duration_pb2.Duration
    long_window: _duration_pb2.Duration
    threshold: float
    def __init__(self, short_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., long_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class HashPolicy(_message.Message):
    __slots__ = ("header", "channel", "min_ring_size", "max_ring_size")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MIN_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    header: str
    channel: bool
    min_ring_size: int
    max_ring_size: int
    def __init__(self, header: _Optional[str] = ..., channel: _Optional[bool] = ..., min_ring_size: _Optional[int] = ..., max_ring_size: _Optional[int] = ...) -> None: ...

class LocalityPolicy(_message.Message):
    __slots__ = ("prefer_own_zone", "spill_over_below")
    PREFER_OWN_ZONE_FIELD_NUMBER: _ClassVar[int]
    SPILL_OVER_BELOW_FIELD_NUMBER: _ClassVar[int]
    prefer_own_zone: bool
    spill_over_below: float
    def __init__(self, prefer_own_zone: _Optional[bool] = ..., spill_over_below: _Optional[float] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "retry_on", "backoff")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    retry_on: _containers.RepeatedScalarFieldContainer[str]
    backoff: Backoff
    def __init__(self, attempts: _Optional[int] = ..., retry_on: _Optional[_Iterable[str]] = ..., backoff: _Optional[_Union[Backoff, _Mapping]] = ...) -> None: ...

class Backoff(_message.Message):
    __slots__ = ("base", "max")
    BASE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    base: _duration_pb2.Duration
    max: _duration_pb2.Duration
    def __init__(self, base: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CircuitBreakerPolicy(_message.Message):
    __slots__ = ("max_requests", "failure_rate", "window", "min_requests", "consecutive_failures", "open_for", "half_open_probes", "slow_call", "max_open_for", "failure_codes")
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FOR_FIELD_NUMBER: _ClassVar[int]
    HALF_OPEN_PROBES_FIELD_NUMBER: _ClassVar[int]
    SLOW_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_FOR_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODES_FIELD_NUMBER: _ClassVar[int]
    max_requests: int
    failure_rate: float
    window: _duration_pb2.Duration
    min_requests: int
    consecutive_failures: int
    open_for: _duration_pb2.Duration
    half_open_probes: int
    slow_call: SlowCallPolicy
    max_open_for: _duration_pb2.Duration
    failure_codes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_requests: _Optional[int] = ..., failure_rate: _Optional[float] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_requests: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., open_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., half_open_probes: _Optional[int] = ..., slow_call: _Optional[_Union[SlowCallPolicy, _Mapping]] = ..., max_open_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., failure_codes: _Optional[_Iterable[str]] = ...) -> None: ...

class SlowCallPolicy(_message.Message):
    __slots__ = ("threshold", "rate")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    threshold: _duration_pb2.Duration
    rate: float
    def __init__(self, threshold: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rate: _Optional[float] = ...) -> None: ...

class OutlierDetectionPolicy(_message.Message):
    __slots__ = ("failure_percentage", "success_rate", "interval", "base_ejection_time", "max_ejection_time", "max_ejection_percent")
    FAILURE_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    failure_percentage: FailurePercentageEjection
    success_rate: SuccessRateEjection
    interval: _duration_pb2.Duration
    base_ejection_time: _duration_pb2.Duration
    max_ejection_time: _duration_pb2.Duration
    max_ejection_percent: int
    def __init__(self, failure_percentage: _Optional[_Union[FailurePercentageEjection, _Mapping]] = ..., success_rate: _Optional[_Union[SuccessRateEjection, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., base_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_percent: _Optional[int] = ...) -> None: ...

class FailurePercentageEjection(_message.Message):
    __slots__ = ("threshold", "minimum_hosts", "request_volume", "enforcement_percentage")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_HOSTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VOLUME_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    minimum_hosts: int
    request_volume: int
    enforcement_percentage: int
    def __init__(self, threshold: _Optional[int] = ..., minimum_hosts: _Optional[int] = ..., request_volume: _Optional[int] = ..., enforcement_percentage: _Optional[int] = ...) -> None: ...

class SuccessRateEjection(_message.Message):
    __slots__ = ("stdev_factor", "minimum_hosts", "request_volume", "enforcement_percentage")
    STDEV_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_HOSTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VOLUME_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    stdev_factor: int
    minimum_hosts: int
    request_volume: int
    enforcement_percentage: int
    def __init__(self, stdev_factor: _Optional[int] = ..., minimum_hosts: _Optional[int] = ..., request_volume: _Optional[int] = ..., enforcement_percentage: _Optional[int] = ...) -> None: ...

class HealthCheckPolicy(_message.Message):
    __slots__ = ("interval", "timeout", "unhealthy_threshold", "healthy_threshold", "service_name")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    interval: _duration_pb2.Duration
    timeout: _duration_pb2.Duration
    unhealthy_threshold: int
    healthy_threshold: int
    service_name: str
    def __init__(self, interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., unhealthy_threshold: _Optional[int] = ..., healthy_threshold: _Optional[int] = ..., service_name: _Optional[str] = ...) -> None: ...

class ServicePolicy(_message.Message):
    __slots__ = ("name", "policy", "routes", "security")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: Policy
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    security: ServiceSecurity
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., security: _Optional[_Union[ServiceSecurity, _Mapping]] = ...) -> None: ...
