"""The agent imports what a run needs, when it needs it: a real agent, run under
``python -X importtime`` (which names every module as it is imported, at start and later),
holding a service with health checks for a local stream, loads none of the heavy parts such
a run does not use: no certificates (cryptography), no YAML, no OpenTelemetry SDK or
exporter, no RE2, no entry point metadata, no TLS or RBAC protos, no pretty printers."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from mesh.v1 import config_pb2
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT
from tests.conftest import free_port, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, apply

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

UNUSED = (
    "cryptography",
    "yaml",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "prometheus_client",
    "re2",
    "importlib.metadata",
    "mesh_xds.transport",
    "envoy.extensions.transport_sockets",
    "mesh_agent.daemon.listener_access",
    # structlog's pretty printer: the attempt to import rich itself is logged, refused.
    "rich.console",
    "rich.traceback",
)
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def test_a_plain_run_loads_none_of_the_parts_it_does_not_use(procs: MeshProcesses) -> None:
    _, control = procs.start_control()
    service = config_pb2.Service(
        name="orders",
        endpoints=[config_pb2.Endpoint(address=f"127.0.0.1:{free_port()}")],
        policy=config_pb2.Policy(health_check=config_pb2.HealthCheckPolicy()),
    )
    asyncio.run(apply(control, service))
    socket = procs.workdir / "node-1.sock"
    ready = procs.workdir / "node-1.ready"
    agent = procs.start(
        "node-1",
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "mesh_agent",
        "run",
        "--control",
        control,
        "--node-id",
        "node-1",
        "--socket",
        str(socket),
        "--state-dir",
        str(procs.workdir / "state"),
        "--ready-file",
        str(ready),
    )
    wait_for(lambda: ready.exists() or not agent.alive, 20, "the agent's ready file")
    target = f"unix:{socket}"

    async def hold() -> None:
        async with AdsClient(target, "local", wait_for_ready=True) as client:
            client.subscribe(CLUSTER, ["orders"])
            client.subscribe(ENDPOINT, ["orders"])
            await client.wait_for(lambda c: bool(c.of_type(ENDPOINT)), 20)

    asyncio.run(hold())
    wait_for(
        lambda: [e.service for e in agent_status(target).endpoint_health] == ["orders"],
        20,
        "the agent checking orders' endpoint",
    )
    assert agent.stop() == 0
    modules = {m.group(1) for line in agent.errors().splitlines() if (m := IMPORTED.match(line))}
    # What the run did need is there: the capture sees the whole run.
    assert {"grpc", "mesh_agent.daemon.agent", "mesh_agent.daemon.health.checker"} <= modules
    loaded = sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in UNUSED))
    assert loaded == [], f"a plain agent run loaded {loaded}"
