"""Telemetry with real processes: control server, agent, backend and client export over OTLP
to a receiver the test runs (the collector services of ``opentelemetry-proto``), and the
daemons serve Prometheus text on ``--metrics-port``."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, LISTENER
from tests.conftest import Proc, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import configure, log_lines, meshctl, metrics_url, scrape
from tests.otlp_receiver import Receiver, receiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

METHOD = "mesh.demo.v1.EchoService/Echo"


@pytest.fixture
def otlp() -> Iterator[Receiver]:
    found = receiver()
    yield found
    found.stop()


def _export_to(procs: MeshProcesses, otlp: Receiver) -> None:
    procs.env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )


def test_one_trace_spans_client_and_backend_with_metrics_and_logs(
    otlp: Receiver, procs: MeshProcesses, tmp_path: Path
) -> None:
    # The receiver is asked for first, so it outlives the processes: they flush to it as
    # they stop, rather than waiting out the exporter's timeout.
    _export_to(procs, otlp)
    _, control = procs.start_control()
    backend_proc, backend = procs.start_backend("b1", proc_name="backend")
    service = tmp_path / "echo.yaml"
    service.write_text(
        f"name: echo\nendpoints: [{{address: '{backend}'}}]\npolicy:\n"
        "  circuit_breaker: {consecutive_failures: 3, open_for: 30s}\n"
    )
    meshctl(control, "apply", "-f", str(service))
    _, agent = procs.start_agent(control, "node-1")

    client = procs.mesh_client("client", agent, "echo", "--count", "3", "--interval", "0.05")
    assert client.popen.wait(30) == 0, client.errors()[-2000:]

    # One trace: the client's span, and the backend's span as its child.
    def pair() -> tuple[object, object] | None:
        spans = otlp.spans()
        clients = [s for s in spans if s.service == "demo-client" and s.span.name == METHOD]
        servers = {
            s.span.parent_span_id: s
            for s in spans
            if s.service == "demo-backend-b1" and s.span.name == METHOD
        }
        for c in clients:
            if c.span.span_id in servers:
                return c, servers[c.span.span_id]
        return None

    c, s = wait_for(pair, 20, "a client span with the backend's span as its child")
    assert c.span.trace_id == s.span.trace_id
    assert c.span.kind == c.span.SPAN_KIND_CLIENT and s.span.kind == s.span.SPAN_KIND_SERVER
    for span in (c, s):
        assert span.attributes["rpc.system.name"] == "grpc"
        assert span.attributes["rpc.method"] == METHOD
        assert span.attributes["rpc.response.status_code"] == "OK"
    assert c.attributes["server.address"] == "echo"
    assert c.attributes["mesh.service"] == "echo"
    assert c.attributes["mesh.breaker.decision"] == "admit"

    # The backend's log line written inside that call carries the call's trace and span.
    trace_id, span_id = c.span.trace_id.hex(), s.span.span_id.hex()
    echoed = [line for line in log_lines(backend_proc) if line.get("event") == "echo"]
    assert len(echoed) == 3 and all("trace_id" in line for line in echoed)
    assert any(line["trace_id"] == trace_id and line["span_id"] == span_id for line in echoed), (
        echoed
    )

    # Call durations, as the semantic conventions name and measure them.
    def histograms() -> bool:
        client_points = [
            p for p in otlp.points("rpc.client.call.duration") if p.service == "demo-client"
        ]
        server_points = [
            p for p in otlp.points("rpc.server.call.duration") if p.service == "demo-backend-b1"
        ]
        return bool(client_points and server_points) and (
            max(p.value for p in client_points if p.attributes.get("rpc.method") == METHOD) == 3
        )

    wait_for(histograms, 20, "rpc.client.call.duration and rpc.server.call.duration")
    point = next(iter(otlp.points("rpc.client.call.duration")))
    assert point.metric.unit == "s" and point.metric.HasField("histogram")
    assert point.attributes["rpc.response.status_code"] == "OK"

    # The agent counted the node's xDS ACKs; the control server its own pushes and ACKs.
    wait_for(
        lambda: otlp.latest("mesh.xds.acks", "mesh-control", **{"mesh.xds.type": "Listener"}),
        20,
        "the control server's ACK counter",
    )
    # Exported every 300 ms each, not necessarily in the same export as the Listener ACK.
    wait_for(
        lambda: otlp.latest("mesh.xds.pushes", "mesh-control", **{"mesh.xds.type": "Cluster"}),
        20,
        "the control server's push counter",
    )
    wait_for(
        lambda: otlp.latest("mesh.xds.acks", "mesh-agent", **{"mesh.xds.server": "agent"}),
        20,
        "the agent's ACK counter",
    )

    # A forced trip: the backend fails every call, the node's breaker opens, and the agent
    # exports the transition.
    configure(backend, fail="UNAVAILABLE")
    failing = procs.mesh_client("failing", agent, "echo", "--count", "6", "--interval", "0.05")
    assert failing.popen.wait(30) == 0, failing.errors()[-2000:]
    opened = wait_for(
        lambda: otlp.latest(
            "mesh.breaker.transitions",
            "mesh-agent",
            **{"mesh.service": "echo", "mesh.breaker.state": "open"},
        ),
        20,
        "the agent's breaker transition counter",
    )
    assert opened == 1
    wait_for(
        lambda: otlp.latest("mesh.breaker.state", "mesh-agent", **{"mesh.service": "echo"}) == 2,
        20,
        "the breaker state gauge to say open",
    )
    wait_for(
        lambda: [
            s
            for s in otlp.spans()
            if s.service == "demo-client"
            and s.attributes.get("mesh.breaker.decision") == "reject"
            and any(e.name == "mesh.circuit_open" for e in s.span.events)
        ],
        20,
        "a fail-fast span with the circuit_open event",
    )

    # A client that NACKs: the control server counts it per type.
    async def nack_clusters() -> None:
        def reject(response: object) -> str | None:
            return "no thanks" if getattr(response, "type_url", "") == CLUSTER else None

        async with AdsClient(control, "nacker", reject=reject) as ads:
            ads.subscribe(LISTENER)
            ads.subscribe(CLUSTER)
            await ads.wait_for(lambda a: bool(a.of_type(CLUSTER)), 10)
            await asyncio.sleep(0.5)

    asyncio.run(nack_clusters())
    nacks = wait_for(
        lambda: otlp.latest("mesh.xds.nacks", "mesh-control", **{"mesh.xds.type": "Cluster"}),
        20,
        "the control server's NACK counter",
    )
    assert nacks >= 1
    assert not otlp.latest("mesh.xds.nacks", "mesh-control", **{"mesh.xds.type": "Listener"})


def test_metrics_port_serves_prometheus_text(procs: MeshProcesses, tmp_path: Path) -> None:
    control_proc, control = procs.start_control("--metrics-port", "0")
    _, backend = procs.start_backend("b1", proc_name="backend")
    service = tmp_path / "echo.yaml"
    service.write_text(f"name: echo\nendpoints: [{{address: '{backend}'}}]\n")
    meshctl(control, "apply", "-f", str(service))
    agent_proc, agent = procs.start_agent(control, "node-1", "--metrics-port", "0")
    # A local client makes the agent subscribe upstream, so there is something to ACK.
    client = procs.mesh_client("client", agent, "echo", "--count", "2", "--interval", "0.05")
    assert client.popen.wait(30) == 0, client.errors()[-2000:]

    control_url = metrics_url(control_proc)
    assert control_url.startswith("http://127.0.0.1:") and control_url.endswith("/metrics")
    # The counters are there from the start, at zero: wait for the Listener ACK itself.
    listener_acks = re.compile(r'^mesh_xds_acks_total\{[^}]*mesh_xds_type="Listener"[^}]*\} (\S+)$')

    def acked() -> str | None:
        text = scrape(control_url)
        for line in text.splitlines():
            found = listener_acks.match(line)
            if found and float(found.group(1)) >= 1:
                return text
        return None

    text = wait_for(acked, 10, "a Listener ACK in the control server's scrape")
    assert "mesh_xds_connected_nodes" in text
    agent_text = scrape(metrics_url(agent_proc))
    assert "mesh_agent_cache_age_seconds{" in agent_text
    assert 'mesh_xds_pushes_total{mesh_xds_server="agent",mesh_xds_type="Listener"' in agent_text


def test_bad_telemetry_settings_are_named(procs: MeshProcesses) -> None:
    bad = procs.python(
        "control",
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory:",
        env={"OTEL_TRACES_EXPORTER": "zipkin"},
    )
    assert bad.popen.wait(20) == 2
    assert "OTEL_TRACES_EXPORTER='zipkin'" in bad.errors()


@pytest.fixture
def stalled_collector() -> Iterator[str]:
    """An OTLP endpoint that takes connections and never answers (a collector that hangs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _stop_time(procs: MeshProcesses, name: str, env: dict[str, str]) -> tuple[float, Proc]:
    """Runs a control server with a node connected (so it has metrics to export), then
    measures SIGTERM to exit."""
    proc, control = procs.start_control(name=name, env=env)
    agent, _ = procs.start_agent(control, f"{name}-node")
    wait_for(lambda: "upstream connected" in agent.errors(), 20, "the agent to connect")
    agent.stop()
    started = time.monotonic()
    proc.stop(timeout=30)
    return time.monotonic() - started, proc


def test_a_stalled_collector_does_not_hold_up_shutdown(
    procs: MeshProcesses, stalled_collector: str
) -> None:
    plain, _ = _stop_time(procs, "plain", {})
    stalled, proc = _stop_time(
        procs,
        "stalled",
        {"OTEL_EXPORTER_OTLP_ENDPOINT": stalled_collector, "OTEL_METRIC_EXPORT_INTERVAL": "200"},
    )
    # The exporter's own timeout is 10 s; the flush at exit is given 1 s.
    assert stalled - plain < 3.0, (plain, stalled)
    events = [line.get("event") for line in log_lines(proc)]
    assert "telemetry not flushed in time; what was not exported is dropped" in events
