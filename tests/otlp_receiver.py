"""An OTLP/gRPC receiver for tests: the collector's trace and metrics services (from
``opentelemetry-proto``) on a real port, keeping what the processes under test export."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def value_of(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(items: Any) -> dict[str, Any]:
    return {item.key: value_of(item.value) for item in items}


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    span: trace_pb2.Span

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


@dataclass(frozen=True)
class Point:
    """One data point of one export: a counter's or gauge's value, or a histogram's count."""

    service: str
    metric: metrics_pb2.Metric
    attributes: dict[str, Any]
    value: float


class Receiver(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self) -> Receiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.traces.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def spans(self) -> list[ExportedSpan]:
        with self._lock:
            requests = list(self.traces)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                service = attributes(resource_spans.resource.attributes).get("service.name", "")
                for scope in resource_spans.scope_spans:
                    found += [ExportedSpan(service, span) for span in scope.spans]
        return found

    def points(self, name: str) -> Iterator[Point]:
        with self._lock:
            requests = list(self.metrics)
        for request in requests:
            for resource_metrics in request.resource_metrics:
                resource = attributes(resource_metrics.resource.attributes)
                service = resource.get("service.name", "")
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name != name:
                            continue
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            if kind == "histogram":
                                value = float(point.count)
                            else:
                                value = point.as_double or float(point.as_int)
                            yield Point(service, metric, attributes(point.attributes), value)

    def latest(self, name: str, service: str, **where: Any) -> float | None:
        """The highest value a series matching ``where`` reached (cumulative temporality:
        the latest export holds the total)."""
        values = [
            p.value
            for p in self.points(name)
            if p.service == service and all(p.attributes.get(k) == v for k, v in where.items())
        ]
        return max(values) if values else None


def receiver() -> Receiver:
    return Receiver().start()
