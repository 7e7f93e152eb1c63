"""RPC spans and call-duration histograms as the OpenTelemetry semantic conventions define
them (``opentelemetry-semantic-conventions``), shared by the client and server interceptors.

Spans are named after the fully qualified method (``package.Service/Method``) and carry
``rpc.system.name``, ``rpc.method`` and ``rpc.response.status_code``; W3C trace context travels
in the call's metadata through the globally configured propagator. Both cost a few attribute
lookups per call while no SDK is installed: the interceptors check for a tracer first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_METHOD,
    RPC_RESPONSE_STATUS_CODE,
    RPC_SYSTEM_NAME,
    RpcSystemNameValues,
)
from opentelemetry.semconv._incubating.metrics.rpc_metrics import (
    RPC_CLIENT_CALL_DURATION,
    RPC_SERVER_CALL_DURATION,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS
from opentelemetry.trace import SpanKind, Status, StatusCode

from mesh_core import __version__

INSTRUMENTATION = "mesh_agent"
GRPC = RpcSystemNameValues.GRPC.value
# Codes a server reports as its own failure (the conventions' list for gRPC servers); a
# client counts every code but OK as an error.
SERVER_ERROR_CODES = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
_NO_TRACER = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_NO_METER: tuple[type, ...] = (metrics.NoOpMeterProvider, _ProxyMeterProvider)
# Asking OpenTelemetry for the global providers reads the environment (~1 µs each): they are
# asked at most once a second until real ones show up, which then stay (each is set once).
_RECHECK = 1.0
_tracer_seen = False
_meter_seen = False
_next_check = 0.0


def _refresh() -> None:
    global _tracer_seen, _meter_seen, _next_check
    now = time.monotonic()
    if now < _next_check:
        return
    _next_check = now + _RECHECK
    _tracer_seen = not isinstance(trace.get_tracer_provider(), _NO_TRACER)
    _meter_seen = not isinstance(metrics.get_meter_provider(), _NO_METER)


def tracing_on() -> bool:
    """Whether a real tracer provider is installed in this process (noticed within a
    second of its installation)."""
    if not _tracer_seen:
        _refresh()
    return _tracer_seen


def telemetry_on() -> bool:
    """Whether a real tracer or meter provider is installed: if neither is, the interceptors
    step aside entirely."""
    if not (_tracer_seen and _meter_seen):
        _refresh()
    return _tracer_seen or _meter_seen


DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
)  # fmt: skip
"""Seconds: the conventions' advice for RPC durations, with three buckets below 5 ms added
for calls on one machine (about 0.5 ms). The SDK's default boundaries (0 to 10000) are made
for milliseconds: in seconds, every call would fall in the first bucket."""


def _duration(meter: metrics.Meter, name: str, description: str) -> metrics.Histogram:
    return meter.create_histogram(
        name,
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )


_methods: dict[str | bytes, str] = {}


def rpc_method(method: str | bytes) -> str:
    """``/package.Service/Method`` as the conventions name it: ``package.Service/Method``."""
    name = _methods.get(method)
    if name is None:
        text = method.decode("utf-8", "replace") if isinstance(method, bytes) else method
        name = text[1:] if text.startswith("/") else text
        if len(_methods) < 4096:  # a hostile peer's made-up methods must not grow it forever
            _methods[method] = name
    return name


CODE_NAMES = {code: code.name for code in grpc.StatusCode}


class _MetadataGetter(Getter[Sequence[tuple[str, Any]]]):
    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def trace_headers(span: trace.Span) -> list[tuple[str, str]]:
    """The metadata that carries ``span``'s context to the next process."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return list(carrier.items())


def _peer(peer: str) -> dict[str, Any]:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` / ``unix:path`` as network attributes."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        attributes: dict[str, Any] = {NETWORK_PEER_ADDRESS: host.strip("[]")}
        if port.isdigit():
            attributes[NETWORK_PEER_PORT] = int(port)
        return attributes
    return {NETWORK_PEER_ADDRESS: peer} if peer else {}


class _Instruments:
    """The tracer and meter to use: the global ones unless providers are given."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)
        self.meter = metrics.get_meter(INSTRUMENTATION, __version__, meter_provider)
        self._own_tracer = tracer_provider is not None
        self._own = tracer_provider is not None or meter_provider is not None

    def tracing(self) -> bool:
        return self._own_tracer or tracing_on()

    def active(self) -> bool:
        """Whether there is anything to record: spans or metrics."""
        return self._own or telemetry_on()


class ClientRpcTelemetry(_Instruments):
    """Client spans and ``rpc.client.call.duration`` for calls to one mesh service."""

    def __init__(
        self,
        service: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        super().__init__(tracer_provider, meter_provider)
        self.service = service
        self.duration = _duration(
            self.meter, RPC_CLIENT_CALL_DURATION, "Measures the duration of an outgoing RPC."
        )

    def start(self, method: str, decision: str) -> trace.Span:
        return self.tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={
                RPC_SYSTEM_NAME: GRPC,
                RPC_METHOD: method,
                SERVER_ADDRESS: self.service,
                "mesh.service": self.service,
                "mesh.breaker.decision": decision,
            },
        )

    def rejected(self, span: trace.Span, details: str, open_until: float) -> None:
        """The breaker failed the call fast: it never left the process."""
        span.add_event(
            "mesh.circuit_open", {"mesh.service": self.service, "mesh.open_until": open_until}
        )
        span.set_attribute(RPC_RESPONSE_STATUS_CODE, "UNAVAILABLE")
        span.set_attribute(ERROR_TYPE, "mesh.circuit_open")
        span.set_status(Status(StatusCode.ERROR, details))
        span.end()

    def finish(
        self, span: trace.Span | None, method: str, started: float, code: str, details: str
    ) -> None:
        attributes: dict[str, Any] = {
            RPC_SYSTEM_NAME: GRPC,
            RPC_METHOD: method,
            RPC_RESPONSE_STATUS_CODE: code,
            SERVER_ADDRESS: self.service,
        }
        if code != "OK":
            attributes[ERROR_TYPE] = code
        self.duration.record(time.perf_counter() - started, attributes)
        if span is not None:
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
            if code != "OK":
                span.set_attribute(ERROR_TYPE, code)
                span.set_status(Status(StatusCode.ERROR, details or code))
            span.end()


class ServerCall:
    """One server call's span and clock; ``enter()``/``exit()`` make its span current."""

    __slots__ = ("attributes", "context", "method", "span", "started", "telemetry")

    def __init__(
        self,
        telemetry: ServerRpcTelemetry,
        method: str,
        metadata: Iterable[tuple[str, Any]] | None,
        peer: str,
    ) -> None:
        self.telemetry = telemetry
        self.method = method
        self.started = time.perf_counter()
        self.span: trace.Span | None = None
        self.context: otel_context.Context | None = None
        if telemetry.tracing():
            parent = propagate.extract(tuple(metadata or ()), getter=_GETTER)
            self.span = telemetry.tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={RPC_SYSTEM_NAME: GRPC, RPC_METHOD: method, **_peer(peer)},
            )
            self.context = trace.set_span_in_context(self.span, parent)

    def enter(self) -> object:
        return otel_context.attach(self.context) if self.context is not None else None

    @staticmethod
    def exit(token: object) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def finish(self, code: str, details: str = "") -> None:
        attributes: dict[str, Any] = {
            RPC_SYSTEM_NAME: GRPC,
            RPC_METHOD: self.method,
            RPC_RESPONSE_STATUS_CODE: code,
        }
        error = code in SERVER_ERROR_CODES
        if error:
            attributes[ERROR_TYPE] = code
        self.telemetry.duration.record(time.perf_counter() - self.started, attributes)
        span = self.span
        if span is not None:
            span.set_attribute(RPC_RESPONSE_STATUS_CODE, code)
            if error:
                span.set_attribute(ERROR_TYPE, code)
                span.set_status(Status(StatusCode.ERROR, details or code))
            span.end()


class ServerRpcTelemetry(_Instruments):
    """Server spans and ``rpc.server.call.duration``."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        super().__init__(tracer_provider, meter_provider)
        self.duration = _duration(
            self.meter, RPC_SERVER_CALL_DURATION, "Measures the duration of an incoming RPC."
        )

    def call(
        self, method: str, metadata: Iterable[tuple[str, Any]] | None, peer: str
    ) -> ServerCall:
        return ServerCall(self, method, metadata, peer)


def code_name(code: grpc.StatusCode | None, default: str = "OK") -> str:
    return CODE_NAMES[code] if code is not None else default


def status_of(context: Any, error: BaseException | None) -> tuple[str, str]:
    """The status a server call ended with, from its context and the exception it raised."""
    code = context.code()
    if isinstance(code, int):  # the asyncio context may hand back the raw number
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if error is not None and code in (None, grpc.StatusCode.OK):
        return "UNKNOWN", f"{type(error).__name__}: {error}"
    details = context.details() if hasattr(context, "details") else ""
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return code_name(code), details or ""
