"""A built-in component replaced through the ``mesh_agent.components`` entry point group is
replaced in the agent's wiring too: here ``upstream``, by a plug-in that fills the cache from a
file and says it is connected to a real control server. The built-in upstream never runs, yet
local processes get the file's config through the agent and the reporter reports the node's
registrations and health to that control server."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from control.resources import build_resources
from mesh.v1 import agent_pb2, agent_pb2_grpc, config_pb2, node_pb2
from tests.conftest import wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import (
    agent_status,
    install_plugin,
    log_lines,
    plugin_env,
    records,
    status_json,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BUILTIN_COMPONENTS = {
    "cache",
    "upstream",
    "health",
    "breakers",
    "reporter",
    "identities",
    "traffic",
    "server",
}

PLUGIN = """
import asyncio, base64, json, os
from pathlib import Path

from google.protobuf import any_pb2

from mesh_agent.daemon.roles import CacheRole
from mesh_agent.daemon.settings import AgentSettings
from mesh_core.signals import Signal


class FileUpstream:
    # The upstream role (mesh_agent.daemon.roles.Upstream), from a file: the cache gets the
    # file's resources, and the first control server is said to be connected.

    name = "upstream"
    requires = ("cache",)

    def __init__(self):
        self.on_connect = Signal()
        self.on_disconnect = Signal()
        self.on_unreachable = Signal()
        self.connected_to = ""
        self.unreachable = ""
        self.stats = {}

    def demand(self, source, wanted):
        pass  # everything there is comes from the file

    async def start(self, ctx):
        cache = ctx.require("cache", CacheRole).cache
        document = json.loads(Path(os.environ["UPSTREAM_FILE"]).read_text())
        for type_url, values in document.items():
            packed = [any_pb2.Any(type_url=type_url, value=base64.b64decode(v)) for v in values]
            error = cache.accept(type_url, "from-file", packed, None)
            if error is not None:
                raise RuntimeError(error)
        self.connected_to = ctx.setting("agent", AgentSettings).control[0]
        self.on_connect.emit(self.connected_to)

    async def run(self):
        await asyncio.Event().wait()

    async def stop(self):
        pass
"""


def write_config(path: Path, service: config_pb2.Service) -> None:
    """The resources the control server would build for ``service``, packed, by type."""
    document = {
        type_url: [
            base64.b64encode(message.SerializeToString(deterministic=True)).decode()
            for _, message in sorted(resources.items())
        ]
        for type_url, resources in build_resources([service]).items()
    }
    path.write_text(json.dumps(document))


def test_a_replaced_upstream_is_the_one_wired_in(procs: MeshProcesses, tmp_path: Path) -> None:
    # The store is empty: the config can come only from the file.
    _, control = procs.start_control("--registration-grace", "60s")
    _, backend = procs.start_backend("backend-file")
    config = tmp_path / "upstream.json"
    write_config(
        config,
        config_pb2.Service(name="filed", endpoints=[config_pb2.Endpoint(address=backend)]),
    )
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    install_plugin(plugin, PLUGIN, "mesh_file_upstream", {"file-upstream": "FileUpstream"})
    env = {**plugin_env(procs, plugin), "UPSTREAM_FILE": str(config)}
    agent_proc, agent = procs.start_agent(control, "node-a", env=env)

    # A local grpcio xDS client gets the file's config through the agent.
    client = procs.start_client(agent, "filed")
    wait_for(
        lambda: any(c.get("backend") == "backend-file" for c in records(client)),
        30,
        "a call routed by the file's config",
    )
    status = agent_status(agent)
    assert (status.upstream, status.connected) == (control, True)
    assert {c.name: c.state for c in status.components}["upstream"] == "running"

    # The reporter reports to the control server the plug-in named: a registration made on
    # the node, and the node's health, with no ADS stream of the node there.
    with grpc.insecure_channel(agent) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(
                registration=node_pb2.Registration(service="filed", address=backend)
            ),
            timeout=5,
        )

    def node_a() -> dict[str, Any] | None:
        nodes = status_json(control).get("nodes", [])
        node = next((n for n in nodes if n["node_id"] == "node-a"), None)
        ready = node and node.get("registrations") and (node.get("health") or {}).get("status")
        return node if ready else None

    node = wait_for(node_a, 20, "node-a's registration and health in meshctl status")
    assert [r["address"] for r in node["registrations"]] == [backend]
    assert node["health"]["status"] == "SERVING"
    assert {c["name"] for c in node["health"]["components"]} == BUILTIN_COMPONENTS
    assert not node.get("stream_id") and not node.get("types"), "node-a has no ADS stream"
    assert any(c["client_id"] == "client-1" for c in node.get("local_clients", []))

    # The built-in upstream was never built into the agent: it neither connected nor tried.
    agent_proc.stop()
    events = log_lines(agent_proc)
    replaced = [e for e in events if e.get("event") == "built-in component replaced by entry point"]
    assert [e["component"] for e in replaced] == ["upstream"]
    builtin_only = {"upstream connected", "control server unreachable", "upstream stream failed"}
    assert not [e for e in events if e.get("event") in builtin_only]
