"""OpenTelemetry set-up for the mesh's processes (control server, agent, and application
processes that want it): traces and metrics exported over OTLP as the standard ``OTEL_*``
environment variables say, and metrics served as Prometheus text on ``--metrics-port``.

Export is off unless asked for. OTLP is on for a signal when ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or the signal's own ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``) is set,
or ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` names ``otlp``; ``none`` turns a
signal off, ``console`` writes it to stderr, and ``OTEL_SDK_DISABLED=true`` turns everything
off. Everything else (headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
the sampler, batch and export intervals) is read by the OpenTelemetry SDK itself. With nothing
installed the API's no-op providers stay in place, and instrumented code costs next to nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from mesh_core.errors import TelemetryConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger(__name__)

_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
SHUTDOWN_TIMEOUT = 1.0
"""Seconds a process waits at exit for its telemetry to be flushed."""
_EXPORTERS = ("otlp", "console", "none")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def exporter_for(signal: str, env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """``otlp``, ``console`` or ``none`` for ``signal`` (``traces`` or ``metrics``)."""
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return "none"
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    named = env.get(variable, "").strip().lower()
    if named:
        names = [n.strip() for n in named.split(",") if n.strip()]
        unknown = [n for n in names if n not in _EXPORTERS]
        if unknown or len(names) != 1:
            raise TelemetryConfigError(
                f"{variable}={named!r}: expected one of {', '.join(_EXPORTERS)}"
            )
        return names[0]
    if env.get(_ENDPOINT) or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"):
        return "otlp"
    return "none"


def _check_protocol(signal: str, env: dict[str, str] | os._Environ[str]) -> None:
    for variable in (
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        protocol = env.get(variable, "").strip()
        if protocol:
            if protocol != "grpc":
                raise TelemetryConfigError(
                    f"{variable}={protocol!r}: this process exports OTLP over grpc only"
                )
            return


def resource_for(service_name: str) -> Resource:
    """The process's resource: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win,
    ``service_name`` fills in when they name no service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    return resource


@dataclass
class Telemetry:
    """What :func:`setup` installed; ``shutdown()`` flushes and stops it."""

    traces: str = "none"
    metrics: str = "none"
    metrics_address: str = ""
    _tracer_provider: TracerProvider | None = None
    _meter_provider: MeterProvider | None = None
    _http: Any = None

    @property
    def tracing(self) -> bool:
        return self._tracer_provider is not None

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Flushes and stops the providers, waiting at most ``timeout`` seconds: with its
        collector down or stalled, an OTLP exporter would otherwise hold the process for its
        whole export timeout (10 s by default). What is not flushed by then is dropped."""
        if self._http is not None:
            self._http.shutdown()
            self._http = None
        providers: list[Any] = [
            p for p in (self._tracer_provider, self._meter_provider) if p is not None
        ]
        self._tracer_provider = self._meter_provider = None
        if not providers:
            return
        done = threading.Event()

        def flush() -> None:
            try:
                for provider in providers:
                    provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=flush, name="telemetry-shutdown", daemon=True).start()
        if not done.wait(timeout):
            log.warning(
                "telemetry not flushed in time; what was not exported is dropped",
                timeout=timeout,
                traces=self.traces,
                metrics=self.metrics,
            )


_installed: Telemetry | None = None


def setup(
    service_name: str,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> Telemetry:
    """Installs the global tracer and meter providers this process's settings ask for, once
    per process (a second call returns what the first installed). ``metrics_port`` (0 picks
    one) serves the process's metrics as Prometheus text at ``http://HOST:PORT/metrics``."""
    global _installed
    if _installed is not None:
        return _installed
    env = os.environ
    telemetry = Telemetry(traces=exporter_for("traces", env), metrics=exporter_for("metrics", env))
    if telemetry.traces == telemetry.metrics == "none" and metrics_port is None:
        # Nothing to export: the API's no-op providers stay, and the SDK is not even loaded.
        log.info(
            "telemetry",
            traces="none",
            metrics="none",
            prometheus=None,
            service=env.get("OTEL_SERVICE_NAME") or service_name,
        )
        _installed = telemetry
        return telemetry
    # The SDK is imported only here: a process that exports nothing does not load it.
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import SERVICE_NAME
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = resource_for(service_name)

    if telemetry.traces != "none":
        # Shut down by Telemetry.shutdown, within its timeout, not by an exit hook of the SDK's
        # that would wait out a stalled exporter.
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if telemetry.traces == "otlp":
            _check_protocol("traces", env)
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        trace.set_tracer_provider(provider)
        telemetry._tracer_provider = provider

    readers: list[MetricReader] = []
    if telemetry.metrics == "otlp":
        _check_protocol("metrics", env)
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    elif telemetry.metrics == "console":
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        server, _thread = start_http_server(metrics_port, addr=metrics_host)
        telemetry._http = server
        host, port = server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        telemetry.metrics_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if readers:
        meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )
        metrics.set_meter_provider(meter_provider)
        telemetry._meter_provider = meter_provider

    log.info(
        "telemetry",
        traces=telemetry.traces,
        metrics=telemetry.metrics,
        prometheus=f"http://{telemetry.metrics_address}/metrics"
        if telemetry.metrics_address
        else None,
        service=str(resource.attributes.get(SERVICE_NAME, "")),
    )
    _installed = telemetry
    return telemetry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` and ``--metrics-host``, the same on every daemon."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve metrics as Prometheus text on this port at /metrics (0 picks one; "
        "off by default)",
    )
    parser.add_argument(
        "--metrics-host",
        default=None,
        help="address the metrics port binds (default 127.0.0.1; 0.0.0.0 for remote scrapes)",
    )


def start(
    program: str, service_name: str, metrics_port: int | None, metrics_host: str | None
) -> Telemetry:
    """:func:`setup` for a daemon's ``main()``: a bad setting or a taken port ends the
    process with one line naming it."""
    try:
        return setup(
            service_name, metrics_port=metrics_port, metrics_host=metrics_host or "127.0.0.1"
        )
    except (TelemetryConfigError, OSError) as error:
        where = f" (metrics port {metrics_port})" if isinstance(error, OSError) else ""
        sys.stderr.write(f"{program}: telemetry{where}: {error}\n")
        raise SystemExit(2) from None
