"""Section ``tracing``: what tracing costs per call, on and off, with the mesh's interceptors
and with the OpenTelemetry grpc instrumentation's own, measured in the same process.

One worker process (``python -m bench.tracing``, started with every ``OTEL_*`` variable
removed from its environment) holds four in-process sync grpc servers on loopback, each with
its own server interceptors, and one channel to each, all in the one process:

* ``plain``: no interceptors (the base);
* ``mesh_off``: ``MeshClientInterceptor`` + ``MeshServerInterceptor`` with no providers, so
  they use the global ones, which are OpenTelemetry's no-op proxies: no SDK is installed in
  the worker (asserted before and after the measurement). "Tracing off";
* ``mesh_on``: the same interceptors given an SDK ``TracerProvider`` (sampler always on,
  a ``BatchSpanProcessor`` with its default settings, to an exporter that counts and drops
  the spans) and an SDK ``MeterProvider`` (a ``PeriodicExportingMetricReader`` with its
  default 60 s interval, to an exporter that drops the data): the kind of pipeline
  ``mesh_core.telemetry.setup`` installs, minus the network. Client and server each have
  their own pair of providers, as two processes would. "Tracing on";
* ``otel``: ``opentelemetry.instrumentation.grpc``'s ``client_interceptor`` (wrapped with its
  ``intercept_channel``, as ``GrpcInstrumentorClient`` does) and ``server_interceptor``, each
  with the same kind of SDK ``TracerProvider`` (it records no metrics).

Nothing global is set: the providers are passed to the interceptors. The mesh interceptors
share one ``AgentLink`` to a socket that does not exist, with echo's breaker view set CLOSED
(``BreakerView(CLOSED, 0, enabled)``) so ``decide()`` takes its normal CLOSED fast path, and
echo known to have no policy timeout (the common case: no deadline to add); the link's watch
thread forgets the view each time it fails to reach the agent, so the view is set
again before every block, and the outcomes ``record()`` queues (no agent takes them) are
dropped before every block so the queue stays under ``MAX_PENDING``.

* ``paired``: after a warm-up on every channel, R rounds of one B-call block per channel
  (sequential unary ``mesh.demo.v1.EchoService/Echo``, ``perf_counter_ns`` around each
  call). The order within a round is rotated by one each round and reversed in rounds 4-7,
  12-15, ..., so over 8 rounds every channel runs in every position in both directions.
  p50/p99 are pooled over all blocks; the paired difference of two channels is the median
  over rounds of (block p50 of one - block p50 of the other, same round), as in the
  ``datapath`` section. ``cpu_us`` is the worker's process CPU per call (client, server and
  background threads: one process holds them all), the median over blocks.
* ``client interceptor alone``: each client interceptor's own work per call, in process,
  around a stand-in for grpcio's call: for the mesh one, ``intercept_unary_unary`` with a
  continuation that returns an already finished call (its done-callback runs at once:
  decide, span, continuation, record, histogram, span end); for the OpenTelemetry one,
  ``intercept_unary`` with an invoker that returns the response at once (span started as
  current, inject, invoker, span end). Also ``mesh_spans_only``: the mesh interceptor with
  the SDK tracer but the no-op meter, which records what the OpenTelemetry one records.
* ``server interceptor alone``: the same for the server side: ``intercept_service`` (grpcio
  calls it once per call) and the handler it returns, around a behavior that returns the
  response, with a stand-in servicer context whose metadata carries a ``traceparent`` when
  the client side would have sent one.

  Both: the stand-in's own cost is subtracted; R' alternating rounds of N iterations, the
  median per variant. Spans go through the same ``BatchSpanProcessor`` pipelines, and the
  summary checks every span and histogram point the calls made reached its exporter.

``python -m bench.tracing --profile TOP`` prints the interceptors-alone loops' TOP functions
by own time under cProfile instead (cProfile inflates small functions: read it for where the
time goes, not for how much).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

from bench import Options, Row, percentile, section

WORKER = "bench.tracing"
SERVICE = "echo"
METHOD = "/mesh.demo.v1.EchoService/Echo"
CALL_TIMEOUT = 5.0
# Variant: what it is. ``plain`` is the base.
VARIANTS: dict[str, str] = {
    "plain": "plain: no interceptor (the base)",
    "mesh_off": "mesh, tracing off: Mesh{Client,Server}Interceptor, no SDK installed",
    "mesh_on": "mesh, tracing on: the same + SDK tracer (batch) and SDK meter",
    "otel": "otel grpc instrumentation: its client+server interceptors + SDK tracer",
}
# The cost table: (a, b, what a - b is).
COSTS: tuple[tuple[str, str, str], ...] = (
    ("mesh_on", "mesh_off", "tracing on vs off, mesh interceptors"),
    ("mesh_off", "plain", "mesh interceptors, tracing off, vs no interceptor"),
    ("mesh_on", "plain", "mesh interceptors, tracing on, vs no interceptor"),
    ("otel", "plain", "otel grpc instrumentation vs no interceptor"),
    ("mesh_on", "otel", "mesh tracing on vs otel instrumentation"),
)
# The interceptors alone, "side:variant": what it is.
MICRO: dict[str, str] = {
    "client:mesh_off": "mesh, tracing off",
    "client:mesh_on": "mesh, tracing on (span + duration histogram)",
    "client:mesh_spans_only": "mesh, SDK tracer only, no-op meter (what otel records)",
    "client:otel": "otel grpc instrumentation (span only)",
    "server:mesh_off": "mesh, tracing off",
    "server:mesh_on": "mesh, tracing on (span + duration histogram)",
    "server:otel": "otel grpc instrumentation (span only)",
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass(frozen=True)
class Plan:
    rounds: int  # blocks per channel
    block: int  # calls per block
    warmup: int  # calls per channel before the first round
    micro_rounds: int
    micro_iterations: int  # per variant per micro round

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(8, 60, 100, 3, 2_000)
        return cls(40, 250, 500, 6, 5_000)

    def args(self) -> list[str]:
        return [
            "--rounds",
            str(self.rounds),
            "--block",
            str(self.block),
            "--warmup",
            str(self.warmup),
            "--micro-rounds",
            str(self.micro_rounds),
            "--micro-iterations",
            str(self.micro_iterations),
        ]


def order(names: tuple[str, ...], r: int) -> tuple[str, ...]:
    """Round r's order: rotated by one more each round, and reversed in every other cycle
    of ``len(names)`` rounds (with 4 names: rounds 4-7, 12-15, ...)."""
    shift = r % len(names)
    rotated = names[shift:] + names[:shift]
    return rotated[::-1] if (r // len(names)) % 2 else rotated


# ------------------------------------------------------------------------------------------
# The worker process
# ------------------------------------------------------------------------------------------


def _no_global_sdk() -> dict[str, str]:
    """The global providers' types; raises unless both are OpenTelemetry's no-op proxies."""
    from opentelemetry import metrics, trace

    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    if not isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        raise AssertionError(f"a global tracer provider is installed: {tracer_provider!r}")
    if not isinstance(meter_provider, metrics.NoOpMeterProvider) and (
        type(meter_provider).__name__ != "_ProxyMeterProvider"
    ):
        raise AssertionError(f"a global meter provider is installed: {meter_provider!r}")
    return {
        "tracer_provider": type(tracer_provider).__name__,
        "meter_provider": type(meter_provider).__name__,
    }


class _Sdk:
    """One process's SDK pipeline: tracer (always on, batched to an exporter that counts and
    drops) and meter (periodic reader to an exporter that keeps only the last batch)."""

    def __init__(self, name: str, metrics_too: bool) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            MetricExporter,
            MetricExportResult,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        sdk = self

        class DropSpans(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                sdk.spans_exported += len(spans)
                return SpanExportResult.SUCCESS

        class DropMetrics(MetricExporter):
            def export(
                self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any
            ) -> MetricExportResult:
                sdk.last_metrics = metrics_data
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
                pass

        self.spans_exported = 0
        self.last_metrics: Any = None
        resource = Resource.create({"service.name": f"bench-tracing-{name}"})
        self.tracer_provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans()))
        self.meter_provider: Any = None
        if metrics_too:
            reader = PeriodicExportingMetricReader(DropMetrics())
            self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    def providers(self) -> dict[str, Any]:
        found = {"tracer_provider": self.tracer_provider}
        if self.meter_provider is not None:
            found["meter_provider"] = self.meter_provider
        return found

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def histogram_count(self, name: str) -> int:
        """Calls counted in histogram ``name`` by the last metrics export (cumulative)."""
        total = 0
        data = self.last_metrics
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        total += sum(point.count for point in metric.data.data_points)
        return total

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


class _DoneCall:
    """Stands in for a finished grpcio call: the done-callback runs at once."""

    def code(self) -> Any:
        import grpc

        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


def _nothing(call: Any) -> None:
    pass


_Details = collections.namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)
_ClientInfo = collections.namedtuple("_ClientInfo", ("full_method", "timeout"))
_HandlerCallDetails = collections.namedtuple(
    "_HandlerCallDetails", ("method", "invocation_metadata")
)
_Metadatum = collections.namedtuple("_Metadatum", ("key", "value"))


class _Context:
    """Stands in for grpcio's servicer context: what the server interceptors read."""

    def __init__(self, metadata: tuple[Any, ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def code(self) -> Any:
        return None

    def details(self) -> Any:
        return None


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        import grpc
        from opentelemetry.instrumentation.grpc import (
            client_interceptor,
            intercept_channel,
            server_interceptor,
        )

        from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
        from mesh_agent.client import MeshClientInterceptor, MeshServerInterceptor
        from mesh_agent.client._link import CLOSED, AgentLink, BreakerView

        self.args = args
        self.globals_before = _no_global_sdk()
        self.grpc = grpc
        self.echo_pb2 = echo_pb2
        self.link = AgentLink("unix:/nonexistent/mesh-bench-tracing.sock", client_id="bench")
        self.view = BreakerView(state=CLOSED, open_until=0.0, enabled=True)
        self.views_lost = 0
        self.closed = CLOSED
        self.sdk = {
            "mesh_client": _Sdk("mesh-client", metrics_too=True),
            "mesh_server": _Sdk("mesh-server", metrics_too=True),
            "otel_client": _Sdk("otel-client", metrics_too=False),
            "otel_server": _Sdk("otel-server", metrics_too=False),
            "mesh_spans_only": _Sdk("mesh-spans-only", metrics_too=False),
        }
        self.mesh_off = MeshClientInterceptor(self.link, SERVICE)
        self.mesh_on = MeshClientInterceptor(
            self.link, SERVICE, **self.sdk["mesh_client"].providers()
        )
        # For the client-alone rows only: spans without the histogram.
        self.mesh_spans_only = MeshClientInterceptor(
            self.link, SERVICE, tracer_provider=self.sdk["mesh_spans_only"].tracer_provider
        )
        self.otel = client_interceptor(tracer_provider=self.sdk["otel_client"].tracer_provider)
        self.set_view()

        class Echo(echo_pb2_grpc.EchoServiceServicer):
            def Echo(self, request: Any, context: Any) -> Any:
                return echo_pb2.EchoResponse(message=request.message, backend="bench")

        self.server_interceptors: dict[str, list[Any]] = {
            "plain": [],
            "mesh_off": [MeshServerInterceptor()],
            "mesh_on": [MeshServerInterceptor(**self.sdk["mesh_server"].providers())],
            "otel": [server_interceptor(tracer_provider=self.sdk["otel_server"].tracer_provider)],
        }
        self.servers: list[Any] = []
        self.channels: list[Any] = []
        self.stubs: dict[str, Any] = {}
        for name in VARIANTS:
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"server-{name}"),
                interceptors=self.server_interceptors[name],
            )
            echo_pb2_grpc.add_EchoServiceServicer_to_server(Echo(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self.servers.append(server)
            raw = grpc.insecure_channel(f"127.0.0.1:{port}")
            self.channels.append(raw)
            if name.startswith("mesh"):
                channel = grpc.intercept_channel(raw, getattr(self, name))
            elif name == "otel":
                channel = intercept_channel(raw, self.otel)
            else:
                channel = raw
            self.stubs[name] = echo_pb2_grpc.EchoServiceStub(channel)
        self.request = echo_pb2.EchoRequest(message="bench")
        self.calls_made = dict.fromkeys(VARIANTS, 0)
        # Spans/histogram points made by the micro loops, one side each.
        self.stand_in_calls = dict.fromkeys(MICRO, 0)

    def set_view(self) -> None:
        """echo's breaker view CLOSED again (the link forgets it when the agent is away), and
        the outcomes no agent will take dropped."""
        link = self.link
        view = link.breakers.get(SERVICE)
        if view is None or view.state != self.closed:
            self.views_lost += 1
            link.breakers = {**link.breakers, SERVICE: self.view}
        link._outcomes.clear()
        if SERVICE not in link.timeouts:
            link.timeouts = {**link.timeouts, SERVICE: None}

    def calls(self, name: str, n: int) -> dict[str, Any]:
        echo, request, clock = self.stubs[name].Echo, self.request, time.perf_counter_ns
        rpc_error = self.grpc.RpcError
        if name.startswith("mesh"):
            self.set_view()
        lat = [0] * n
        errors = 0
        cpu0 = time.process_time_ns()
        for i in range(n):
            t0 = clock()
            try:
                echo(request, timeout=CALL_TIMEOUT)
            except rpc_error:
                errors += 1
            lat[i] = clock() - t0
        cpu = (time.process_time_ns() - cpu0) / max(n, 1)
        self.calls_made[name] += n
        return {"lat_ns": lat, "errors": errors, "cpu_ns": cpu}

    def paired(self) -> dict[str, Any]:
        args = self.args
        names = tuple(VARIANTS)
        for name in names:
            self.stubs[name].Echo(self.request, timeout=30, wait_for_ready=True)
            self.calls_made[name] += 1
            self.calls(name, args.warmup)
        lat: dict[str, list[int]] = {name: [] for name in names}
        block_p50: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        errors = dict.fromkeys(names, 0)
        started = time.monotonic()
        for r in range(args.rounds):
            for name in order(names, r):
                result = self.calls(name, args.block)
                lat[name].extend(result["lat_ns"])
                block_p50[name].append(statistics.median(result["lat_ns"]))
                cpu[name].append(result["cpu_ns"])
                errors[name] += result["errors"]
        return {
            "lat_ns": lat,
            "block_p50_ns": block_p50,
            "cpu_ns": cpu,
            "errors": errors,
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- the client interceptors alone -----------------------------------------------------

    def micro_loops(self) -> dict[str, Any]:
        """ "side:variant" -> (loop, stand-in loop), each ``f(n)`` returning elapsed ns."""
        import grpc

        clock = time.perf_counter_ns
        details = _Details(METHOD, CALL_TIMEOUT, None, None, None, None)
        info = _ClientInfo(METHOD, CALL_TIMEOUT)
        request = self.request
        response = self.echo_pb2.EchoResponse(message="bench", backend="bench")
        call = _DoneCall()

        def continuation(details: Any, request: Any) -> _DoneCall:
            return call

        def invoker(request: Any, metadata: Any) -> Any:
            return response

        def mesh(interceptor: Any) -> Any:
            intercept = interceptor.intercept_unary_unary

            def loop(n: int) -> int:
                t0 = clock()
                for _ in range(n):
                    intercept(continuation, details, request)
                return clock() - t0

            return loop

        def mesh_stand_in(n: int) -> int:
            t0 = clock()
            for _ in range(n):
                continuation(details, request).add_done_callback(_nothing)
            return clock() - t0

        intercept_unary = self.otel.intercept_unary

        def otel(n: int) -> int:
            t0 = clock()
            for _ in range(n):
                intercept_unary(request, None, info, invoker)
            return clock() - t0

        def otel_stand_in(n: int) -> int:
            t0 = clock()
            for _ in range(n):
                invoker(request, None)
            return clock() - t0

        # The server side: intercept_service (once per call in grpcio) and the handler it
        # returns, around a behavior that returns the response, with a stand-in context.
        # The metadata carries a traceparent when the client side traces.
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)

        def handler_for(call_details: Any) -> Any:
            return handler

        def server(interceptor: Any, traced: bool) -> tuple[Any, Any]:
            metadata = (_Metadatum("user-agent", "grpc-python/bench"),)
            if traced:
                metadata = (_Metadatum("traceparent", TRACEPARENT), *metadata)
            call_details = _HandlerCallDetails(METHOD, metadata)
            context = _Context(metadata)
            intercept = interceptor.intercept_service

            def loop(n: int) -> int:
                t0 = clock()
                for _ in range(n):
                    intercept(handler_for, call_details).unary_unary(request, context)
                return clock() - t0

            def stand_in(n: int) -> int:
                t0 = clock()
                for _ in range(n):
                    handler_for(call_details).unary_unary(request, context)
                return clock() - t0

            return loop, stand_in

        servers = self.server_interceptors
        return {
            "client:mesh_off": (mesh(self.mesh_off), mesh_stand_in),
            "client:mesh_on": (mesh(self.mesh_on), mesh_stand_in),
            "client:mesh_spans_only": (mesh(self.mesh_spans_only), mesh_stand_in),
            "client:otel": (otel, otel_stand_in),
            "server:mesh_off": server(servers["mesh_off"][0], traced=False),
            "server:mesh_on": server(servers["mesh_on"][0], traced=True),
            "server:otel": server(servers["otel"][0], traced=True),
        }

    def micro(self) -> dict[str, Any]:
        args = self.args
        n = args.micro_iterations
        loops = self.micro_loops()
        for name, (loop, stand_in) in loops.items():  # warm-up, not measured
            self.set_view()
            loop(min(n, 1000))
            stand_in(min(n, 1000))
            self.stand_in_calls[name] += min(n, 1000)
        ns: dict[str, list[float]] = {name: [] for name in loops}
        stand_in_ns: dict[str, list[float]] = {name: [] for name in loops}
        for r in range(args.micro_rounds):
            for name in order(tuple(MICRO), r):
                loop, stand_in = loops[name]
                self.set_view()
                elapsed = loop(n)
                self.stand_in_calls[name] += n
                ns[name].append(elapsed / n)
                stand_in_ns[name].append(stand_in(n) / n)
                time.sleep(0.02)  # let the batch span processor's thread catch up
        return {
            "ns": ns,
            "stand_in_ns": stand_in_ns,
            "iterations": n,
            "rounds": args.micro_rounds,
        }

    def profile(self, top: int) -> dict[str, Any]:
        """The micro loops under cProfile: the top functions by own time, per variant."""
        import cProfile
        import pstats

        n = self.args.micro_iterations
        found: dict[str, Any] = {}
        for name, (loop, _) in self.micro_loops().items():
            self.set_view()
            profiler = cProfile.Profile()
            profiler.enable()
            loop(n)
            profiler.disable()
            stats = pstats.Stats(profiler)
            entries = []
            for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
                short = "/".join(path.split("/")[-2:]) if path != "~" else ""
                entries.append(
                    {
                        "function": f"{short}:{line}:{func}" if short else func,
                        "per_call": round(ncalls / n, 2),
                        "own_ns": round(tottime / n * 1e9),
                        "cum_ns": round(cumtime / n * 1e9),
                    }
                )
            entries.sort(key=lambda e: e["own_ns"], reverse=True)
            found[name] = {
                "total_own_ns": sum(e["own_ns"] for e in entries),
                "top": entries[:top],
            }
        return found

    # -- checks and shutdown -----------------------------------------------------------------

    def flush(self) -> None:
        for sdk in self.sdk.values():
            sdk.flush()

    def checks(self) -> dict[str, Any]:
        """Whether tracing was really on where it should be: each SDK pipeline's spans
        exported and histogram counts against the calls made (expected, got)."""
        self.flush()
        sdk, made, stand_in = self.sdk, self.calls_made, self.stand_in_calls
        return {
            "calls_made": made,
            "spans_mesh_client": (
                made["mesh_on"] + stand_in["client:mesh_on"],
                sdk["mesh_client"].spans_exported,
            ),
            "spans_mesh_server": (
                made["mesh_on"] + stand_in["server:mesh_on"],
                sdk["mesh_server"].spans_exported,
            ),
            "spans_otel_client": (
                made["otel"] + stand_in["client:otel"],
                sdk["otel_client"].spans_exported,
            ),
            "spans_otel_server": (
                made["otel"] + stand_in["server:otel"],
                sdk["otel_server"].spans_exported,
            ),
            "spans_mesh_spans_only": (
                stand_in["client:mesh_spans_only"],
                sdk["mesh_spans_only"].spans_exported,
            ),
            "histogram_mesh_client": (
                made["mesh_on"] + stand_in["client:mesh_on"],
                sdk["mesh_client"].histogram_count("rpc.client.call.duration"),
            ),
            "histogram_mesh_server": (
                made["mesh_on"] + stand_in["server:mesh_on"],
                sdk["mesh_server"].histogram_count("rpc.server.call.duration"),
            ),
            "globals_before": self.globals_before,
            "globals_after": _no_global_sdk(),
            "views_lost": self.views_lost,
        }

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in self.servers:
            server.stop(None)
        for sdk in self.sdk.values():
            sdk.shutdown()
        self.link.close()


def worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER}", description=__doc__)
    parser.add_argument("--rounds", type=int, default=Plan.of(False).rounds)
    parser.add_argument("--block", type=int, default=Plan.of(False).block)
    parser.add_argument("--warmup", type=int, default=Plan.of(False).warmup)
    parser.add_argument("--micro-rounds", type=int, default=Plan.of(False).micro_rounds)
    parser.add_argument("--micro-iterations", type=int, default=Plan.of(False).micro_iterations)
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        help="only print the micro loops' top TOP functions under cProfile",
    )
    args = parser.parse_args(argv)
    worker = Worker(args)
    try:
        if args.profile:
            result: dict[str, Any] = {"profile": worker.profile(args.profile)}
        else:
            paired = worker.paired()
            micro = worker.micro()
            result = {"paired": paired, "micro": micro, "checks": worker.checks()}
    finally:
        worker.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------
# The section
# ------------------------------------------------------------------------------------------


def _us(ns: float) -> float:
    return round(ns / 1000, 1)


def _diffs(paired: dict[str, Any], a: str, b: str) -> list[float]:
    p50 = paired["block_p50_ns"]
    return [x - y for x, y in zip(p50[a], p50[b], strict=True)]


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def _got(checks: dict[str, Any], *keys: str) -> str:
    expected = sum(checks[key][0] for key in keys)
    got = sum(checks[key][1] for key in keys)
    return f"{got}/{expected}"


def worker_env() -> dict[str, str]:
    from bench._procs import child_env

    return {k: v for k, v in child_env().items() if not k.startswith("OTEL_")}


def call_rows(paired: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, what in VARIANTS.items():
        lat = paired["lat_ns"][name]
        diffs = _diffs(paired, name, "plain")
        q1, q3 = _quartiles(diffs)
        base = name == "plain"
        rows.append(
            {
                "table": "calls (sequential unary Echo on loopback, one process, alternating "
                "blocks, µs per call)",
                "variant": name,
                "calls": len(lat),
                "errors": paired["errors"][name],
                "p50_us": _us(statistics.median(lat)),
                "p90_us": _us(percentile(lat, 90)),
                "p99_us": _us(percentile(lat, 99)),
                "block_p50_min_us": _us(min(paired["block_p50_ns"][name])),
                "block_p50_max_us": _us(max(paired["block_p50_ns"][name])),
                "cpu_us": _us(statistics.median(paired["cpu_ns"][name])),
                "added_paired_us": None if base else _us(statistics.median(diffs)),
                "paired_q1_us": None if base else _us(q1),
                "paired_q3_us": None if base else _us(q3),
                "rounds_slower": None if base else sum(d > 0 for d in diffs),
                "what": what,
            }
        )
    return rows


def cost_rows(paired: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for a, b, what in COSTS:
        diffs = _diffs(paired, a, b)
        q1, q3 = _quartiles(diffs)
        cpu_a = statistics.median(paired["cpu_ns"][a])
        cpu_b = statistics.median(paired["cpu_ns"][b])
        rows.append(
            {
                "table": "cost (paired: median over rounds of block p50 a - block p50 b, µs "
                "per call)",
                "compare": f"{a} - {b}",
                "a_p50_us": _us(statistics.median(paired["lat_ns"][a])),
                "b_p50_us": _us(statistics.median(paired["lat_ns"][b])),
                "paired_us": _us(statistics.median(diffs)),
                "paired_q1_us": _us(q1),
                "paired_q3_us": _us(q3),
                "rounds_a_slower": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
                "cpu_us": _us(cpu_a - cpu_b),
                "what": what,
            }
        )
    return rows


MICRO_TABLES = {
    "client": "client interceptor alone (in process, around a stand-in call that is already "
    "finished; ns per call, stand-in subtracted)",
    "server": "server interceptor alone (in process, intercept_service + the handler it "
    "returns, stand-in context; ns per call, stand-in subtracted)",
}


def micro_rows(micro: dict[str, Any]) -> list[Row]:
    own: dict[str, list[float]] = {
        key: [t - s for t, s in zip(micro["ns"][key], micro["stand_in_ns"][key], strict=True)]
        for key in MICRO
    }
    net = {key: statistics.median(values) for key, values in own.items()}
    rows: list[Row] = []
    for key, what in MICRO.items():
        side, name = key.split(":")
        off = f"{side}:mesh_off"
        rows.append(
            {
                "table": MICRO_TABLES[side],
                "variant": name,
                "intercept_ns": round(net[key]),
                "min_ns": round(min(own[key])),
                "max_ns": round(max(own[key])),
                "stand_in_ns": round(statistics.median(micro["stand_in_ns"][key])),
                "vs_mesh_off_ns": None if key == off else round(net[key] - net[off]),
                "iterations": micro["iterations"] * micro["rounds"],
                "what": what,
            }
        )
    return rows


@section("tracing")
def run(options: Options) -> list[Row]:
    plan = Plan.of(options.quick)
    err = options.workdir / "tracing-worker.err"
    with err.open("wb") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", WORKER, *plan.args()],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=worker_env(),
            cwd=options.workdir,
            text=True,
            timeout=900,
            check=False,
        )
    if result.returncode != 0:
        tail = err.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"tracing worker exited with {result.returncode}:\n{tail}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    paired, micro, checks = data["paired"], data["micro"], data["checks"]

    rows = call_rows(paired)
    costs = cost_rows(paired)
    rows.extend(costs)
    rows.extend(micro_rows(micro))
    calls = {row["variant"]: row for row in rows if row["table"].startswith("calls")}
    cost = {row["compare"]: row["paired_us"] for row in costs}
    intercept = {
        f"{row['table'].split()[0]}_{row['variant']}": row["intercept_ns"]
        for row in rows
        if row["table"] in MICRO_TABLES.values()
    }
    summary: Row = {"table": "summary"}
    for name in VARIANTS:
        summary[f"{name}_p50_us"] = calls[name]["p50_us"]
        summary[f"{name}_p99_us"] = calls[name]["p99_us"]
    summary.update(
        {
            "tracing_on_vs_off_us": cost["mesh_on - mesh_off"],
            "mesh_off_vs_plain_us": cost["mesh_off - plain"],
            "mesh_on_vs_plain_us": cost["mesh_on - plain"],
            "otel_vs_plain_us": cost["otel - plain"],
            "mesh_on_vs_otel_us": cost["mesh_on - otel"],
            **{f"{key}_ns": value for key, value in intercept.items()},
            # Tracing was on where it should be: every span and histogram point expected
            # from the calls made reached its exporter ("got/expected").
            "spans_mesh_on": _got(checks, "spans_mesh_client", "spans_mesh_server"),
            "spans_otel": _got(checks, "spans_otel_client", "spans_otel_server"),
            "spans_mesh_spans_only": _got(checks, "spans_mesh_spans_only"),
            "histogram_mesh_on": _got(checks, "histogram_mesh_client", "histogram_mesh_server"),
            "global_tracer_provider": checks["globals_after"]["tracer_provider"],
            "global_meter_provider": checks["globals_after"]["meter_provider"],
            "breaker_view_reset": checks["views_lost"],
            "rounds": plan.rounds,
            "block_calls": plan.block,
            "paired_seconds": paired["seconds"],
        }
    )
    rows.append(summary)
    return rows


if __name__ == "__main__":
    worker_main()
