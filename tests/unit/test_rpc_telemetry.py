"""The client and server interceptors' spans, trace propagation, duration histograms and log
correlation, over real grpc servers and channels on loopback, for all four call types, sync
and asyncio, through the mesh channels and through the client interceptors alike. The SDK
providers are injected (the seam), so no global state is touched."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
import structlog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mesh_agent.client import AioMeshServerInterceptor, MeshClientInterceptor, MeshServerInterceptor
from mesh_agent.client._aio_channel import AioMeshChannel
from mesh_agent.client._gate import Gate
from mesh_agent.client._interceptors import aio_interceptors
from mesh_agent.client._link import OPEN, AgentLink, BreakerView
from mesh_agent.client._sync_channel import MeshChannel
from mesh_core.logs import add_trace_context
from mesh_core.rpc_telemetry import DURATION_BUCKETS, ClientRpcTelemetry, ServerRpcTelemetry

pytestmark = pytest.mark.timeout(30)

SERVICE = "test.v1.Probe"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
METHODS = {kind: f"/{SERVICE}/{kind.title().replace('_', '')}" for kind in KINDS}
# How the client side is set up: the mesh channel (mesh_channel()'s kind) around a plain one,
# or the client interceptors on a plain one (mesh_interceptor()'s kind).
VIA = ("channel", "interceptor")


def sync_client(raw: grpc.Channel, via: str, link: AgentLink, **providers: Any) -> grpc.Channel:
    if via == "channel":
        return MeshChannel(raw, Gate(link, "probe", **providers))
    return grpc.intercept_channel(raw, MeshClientInterceptor(link, "probe", **providers))


def aio_client(target: str, via: str, link: AgentLink, **providers: Any) -> grpc.aio.Channel:
    if via == "channel":
        return AioMeshChannel(grpc.aio.insecure_channel(target), Gate(link, "probe", **providers))
    return grpc.aio.insecure_channel(
        target, interceptors=aio_interceptors(link, "probe", **providers)
    )


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished(self, count: int) -> list[ReadableSpan]:
        deadline = time.monotonic() + 5
        while len(self.spans.get_finished_spans()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.spans.get_finished_spans())

    def histogram(self, name: str) -> list[tuple[dict[str, Any], int]]:
        data = self.reader.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        assert metric.unit == "s"
                        points += [(dict(p.attributes), p.count) for p in metric.data.data_points]
        return points


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    structlog.configure(
        processors=[add_trace_context, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    yield out
    structlog.reset_defaults()


@pytest.fixture
def link() -> Iterator[AgentLink]:
    # No agent: the link fails open, and the test sets breaker views directly.
    link = AgentLink("unix:/nonexistent/agent.sock", client_id="telemetry-test")
    # Known to have no policy timeout: a call does not wait for the agent's first word (its
    # failure, which would also clear the breaker views a test sets).
    link.timeouts = {"probe": None}
    yield link
    link.close()


def _fail_if_asked(request: bytes, context: Any) -> None:
    if request == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")


def sync_handlers() -> grpc.GenericRpcHandler:
    log = structlog.get_logger("handler")

    def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        log.info("handling", kind="unary_unary")
        _fail_if_asked(request, context)
        return request

    def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        log.info("handling", kind="unary_stream")
        _fail_if_asked(request, context)
        for _ in range(3):
            log.info("sending", kind="unary_stream")
            yield request

    def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        items = list(requests)
        log.info("handling", kind="stream_unary")
        _fail_if_asked(items[0], context)
        return b"".join(items)

    def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for item in requests:
            log.info("handling", kind="stream_stream")
            _fail_if_asked(item, context)
            yield item

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


def aio_handlers() -> grpc.GenericRpcHandler:
    log = structlog.get_logger("handler")

    async def unary_unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        log.info("handling", kind="unary_unary")
        if request == b"fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
        return request

    async def unary_stream(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        log.info("handling", kind="unary_stream")
        if request == b"fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
        for _ in range(3):
            log.info("sending", kind="unary_stream")
            yield request

    async def stream_unary(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        items = [item async for item in requests]
        log.info("handling", kind="stream_unary")
        if items[0] == b"fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
        return b"".join(items)

    async def stream_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        # The write() style, not a generator: both must be traced.
        async for item in requests:
            log.info("handling", kind="stream_stream")
            if item == b"fail":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
            await context.write(item)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


def _check_pair(spans: list[ReadableSpan], kind: str, code: str, logs: str) -> None:
    method = METHODS[kind][1:]
    client = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == method]
    server = [s for s in spans if s.kind is SpanKind.SERVER and s.name == method]
    assert len(client) == 1 and len(server) == 1, (kind, [s.name for s in spans])
    c, s = client[0], server[0]
    assert s.context.trace_id == c.context.trace_id
    assert s.parent is not None and s.parent.span_id == c.context.span_id
    for span in (c, s):
        assert span.attributes["rpc.system.name"] == "grpc"
        assert span.attributes["rpc.method"] == method
        assert span.attributes["rpc.response.status_code"] == code
    assert c.attributes["server.address"] == "probe"
    assert c.attributes["mesh.breaker.decision"] == "admit"
    assert s.attributes["network.peer.address"] == "127.0.0.1"
    if code == "OK":
        assert c.status.status_code is StatusCode.UNSET
    else:
        assert c.status.status_code is StatusCode.ERROR and c.attributes["error.type"] == code
        assert s.status.status_code is StatusCode.ERROR and s.attributes["error.type"] == code
    # Log lines written in the handler carry the server span's ids, each one of them.
    written = [json.loads(line) for line in logs.splitlines()]
    written = [line for line in written if line["event"] in ("handling", "sending")]
    assert written and all("trace_id" in line for line in written)
    trace_id = format(s.context.trace_id, "032x")
    lines = [json.loads(line) for line in logs.splitlines() if trace_id in line]
    assert lines and all(line["span_id"] == format(s.context.span_id, "016x") for line in lines)


def _call_sync(channel: grpc.Channel, kind: str, payload: bytes) -> list[bytes]:
    stub: Any = getattr(channel, kind)(METHODS[kind])
    if kind == "unary_unary":
        return [stub(payload, timeout=5)]
    if kind == "unary_stream":
        return list(stub(payload, timeout=5))
    if kind == "stream_unary":
        return [stub(iter([payload, b"x"]), timeout=5)]
    return list(stub(iter([payload, b"x"]), timeout=5))


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("kind", KINDS)
def test_sync_calls_are_traced_end_to_end(
    kind: str, via: str, link: AgentLink, logs: io.StringIO
) -> None:
    telemetry = Telemetry()
    server = grpc.server(
        futures.ThreadPoolExecutor(4),
        handlers=[sync_handlers()],
        interceptors=[MeshServerInterceptor(**telemetry.providers())],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as raw:
            channel = sync_client(raw, via, link, **telemetry.providers())
            assert _call_sync(channel, kind, b"hi")[0].startswith(b"hi")
            _check_pair(telemetry.finished(2), kind, "OK", logs.getvalue())
            telemetry.spans.clear()
            with pytest.raises(grpc.RpcError) as failed:
                _call_sync(channel, kind, b"fail")
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
            _check_pair(telemetry.finished(2), kind, "UNAVAILABLE", logs.getvalue())
    finally:
        server.stop(None)
    method = METHODS[kind][1:]
    for name in ("rpc.client.call.duration", "rpc.server.call.duration"):
        points = {p[0]["rpc.response.status_code"]: p for p in telemetry.histogram(name)}
        assert points["OK"][0]["rpc.method"] == method and points["OK"][1] == 1
        assert points["UNAVAILABLE"][0]["error.type"] == "UNAVAILABLE"


async def _call_aio(channel: grpc.aio.Channel, kind: str, payload: bytes) -> list[bytes]:
    stub: Any = getattr(channel, kind)(METHODS[kind])
    if kind == "unary_unary":
        return [await stub(payload, timeout=5)]
    if kind == "unary_stream":
        return [item async for item in stub(payload, timeout=5)]
    if kind == "stream_unary":
        return [await stub(iter([payload, b"x"]), timeout=5)]
    return [item async for item in stub(iter([payload, b"x"]), timeout=5)]


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("kind", KINDS)
async def test_aio_calls_are_traced_end_to_end(
    kind: str, via: str, link: AgentLink, logs: io.StringIO
) -> None:
    telemetry = Telemetry()
    server = grpc.aio.server(
        handlers=[aio_handlers()], interceptors=[AioMeshServerInterceptor(**telemetry.providers())]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio_client(f"127.0.0.1:{port}", via, link, **telemetry.providers()) as channel:
            assert (await _call_aio(channel, kind, b"hi"))[0].startswith(b"hi")
            await asyncio.to_thread(telemetry.finished, 2)
            _check_pair(telemetry.finished(2), kind, "OK", logs.getvalue())
            telemetry.spans.clear()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _call_aio(channel, kind, b"fail")
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
            await asyncio.to_thread(telemetry.finished, 2)
            _check_pair(telemetry.finished(2), kind, "UNAVAILABLE", logs.getvalue())
    finally:
        await server.stop(None)
    points = {
        p[0]["rpc.response.status_code"]: p for p in telemetry.histogram("rpc.client.call.duration")
    }
    assert points["OK"][1] == 1 and points["UNAVAILABLE"][1] == 1


@pytest.mark.parametrize("via", VIA)
def test_open_breaker_is_a_span_event_and_nothing_is_sent(link: AgentLink, via: str) -> None:
    telemetry = Telemetry()
    link.breakers["probe"] = BreakerView(state=OPEN, open_until=time.time() + 60, enabled=True)
    with grpc.insecure_channel("127.0.0.1:1") as raw:
        channel = sync_client(raw, via, link, **telemetry.providers())
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(METHODS["unary_unary"])(b"hi", timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    (span,) = telemetry.finished(1)
    assert span.kind is SpanKind.CLIENT and span.status.status_code is StatusCode.ERROR
    assert span.attributes["mesh.breaker.decision"] == "reject"
    assert span.attributes["error.type"] == "mesh.circuit_open"
    (event,) = span.events
    assert event.name == "mesh.circuit_open" and event.attributes["mesh.service"] == "probe"
    # A call that never left the process is not an RPC duration.
    assert telemetry.histogram("rpc.client.call.duration") == []


@pytest.mark.parametrize("via", VIA)
def test_without_a_tracer_nothing_is_added_to_the_call(link: AgentLink, via: str) -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(tuple(context.invocation_metadata()))
        return request

    server = grpc.server(
        futures.ThreadPoolExecutor(2),
        handlers=[
            grpc.method_handlers_generic_handler(
                SERVICE, {"UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary)}
            )
        ],
        interceptors=[MeshServerInterceptor()],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as raw:
            channel = sync_client(raw, via, link)
            assert channel.unary_unary(METHODS["unary_unary"])(b"hi", timeout=5) == b"hi"
    finally:
        server.stop(None)
    assert [k for k, _ in seen[0] if k in ("traceparent", "tracestate")] == []


def test_call_durations_have_buckets_in_seconds() -> None:
    """Loopback calls take about half a millisecond: the buckets must tell 0.5 ms from 50 ms
    (the SDK's default boundaries, made for milliseconds, would put both in the first)."""
    telemetry = Telemetry()
    server = ServerRpcTelemetry(meter_provider=telemetry.meter_provider)
    client = ClientRpcTelemetry("probe", meter_provider=telemetry.meter_provider)
    for duration in (server.duration, client.duration):
        duration.record(0.0004, {"rpc.method": "fast"})
        duration.record(0.04, {"rpc.method": "slow"})
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    seen = set()
    for scope in data.resource_metrics[0].scope_metrics:
        for metric in scope.metrics:
            seen.add(metric.name)
            assert metric.unit == "s"
            for point in metric.data.data_points:  # type: ignore[union-attr]
                assert tuple(point.explicit_bounds) == DURATION_BUCKETS
                # Exactly one bucket holds the call, and it is below 1 ms or above 25 ms.
                index = point.bucket_counts.index(1)
                if point.attributes["rpc.method"] == "fast":
                    assert DURATION_BUCKETS[index] <= 0.001
                else:
                    assert DURATION_BUCKETS[index - 1] >= 0.025
    assert seen == {"rpc.client.call.duration", "rpc.server.call.duration"}
