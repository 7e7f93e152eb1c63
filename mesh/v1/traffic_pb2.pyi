import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrafficCounts(_message.Message):
    __slots__ = ("caller", "service", "codes", "latency_buckets", "latency_sum_ms", "breaker")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    caller: str
    service: str
    codes: _containers.ScalarMap[str, int]
    latency_buckets: _containers.RepeatedScalarFieldContainer[int]
    latency_sum_ms: float
    breaker: str
    def __init__(self, caller: _Optional[str] = ..., service: _Optional[str] = ..., codes: _Optional[_Mapping[str, int]] = ..., latency_buckets: _Optional[_Iterable[int]] = ..., latency_sum_ms: _Optional[float] = ..., breaker: _Optional[str] = ...) -> None: ...

class TrafficEdge(_message.Message):
    __slots__ = ("caller", "service", "node_id", "rps", "error_rate", "p50_ms", "p99_ms", "breaker", "warning", "codes", "calls", "latency_buckets", "mean_ms", "seconds", "last_seen")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    BREAKER_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    caller: str
    service: str
    node_id: str
    rps: float
    error_rate: float
    p50_ms: float
    p99_ms: float
    breaker: str
    warning: str
    codes: _containers.ScalarMap[str, int]
    calls: int
    latency_buckets: _containers.RepeatedScalarFieldContainer[int]
    mean_ms: float
    seconds: float
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, caller: _Optional[str] = ..., service: _Optional[str] = ..., node_id: _Optional[str] = ..., rps: _Optional[float] = ..., error_rate: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., breaker: _Optional[str] = ..., warning: _Optional[str] = ..., codes: _Optional[_Mapping[str, int]] = ..., calls: _Optional[int] = ..., latency_buckets: _Optional[_Iterable[int]] = ..., mean_ms: _Optional[float] = ..., seconds: _Optional[float] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrafficWindow(_message.Message):
    __slots__ = ("server_id", "window_seconds", "latency_bounds_ms", "edges", "time")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_BOUNDS_MS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    window_seconds: float
    latency_bounds_ms: _containers.RepeatedScalarFieldContainer[float]
    edges: _containers.RepeatedCompositeFieldContainer[TrafficSpan]
    time: _timestamp_pb2.Timestamp
    def __init__(self, server_id: _Optional[str] = ..., window_seconds: _Optional[float] = ..., latency_bounds_ms: _Optional[_Iterable[float]] = ..., edges: _Optional[_Iterable[_Union[TrafficSpan, _Mapping]]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrafficSpan(_message.Message):
    __slots__ = ("node_id", "start_unix", "last_unix", "counts")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    START_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_UNIX_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    start_unix: float
    last_unix: float
    counts: TrafficCounts
    def __init__(self, node_id: _Optional[str] = ..., start_unix: _Optional[float] = ..., last_unix: _Optional[float] = ..., counts: _Optional[_Union[TrafficCounts, _Mapping]] = ...) -> None: ...
