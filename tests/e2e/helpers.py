"""What e2e tests share besides starting processes (that is ``procs``, in conftest): meshctl,
status JSON, demo client output, the agent's API, the demo backend's Configure, breaker
lookups, service files and a PKI."""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control import certs
from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, config_pb2, node_pb2
from mesh_core import tls
from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.conftest import MeshProcesses

OPEN = agent_pb2.BREAKER_STATE_OPEN
CLOSED = agent_pb2.BREAKER_STATE_CLOSED

# -- meshctl and the control server -----------------------------------------------------------


def meshctl(control: str, *args: str) -> str:
    """Runs ``meshctl --control CONTROL ARGS``; asserts it succeeded; returns its stdout."""
    result = run_cli("control.meshctl", "--control", control, *args)
    assert result.returncode == 0, f"meshctl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def status_json(control: str) -> dict[str, Any]:
    """``meshctl status -o json``."""
    status: dict[str, Any] = json.loads(meshctl(control, "status", "-o", "json"))
    return status


def json_node(control: str, node_id: str) -> dict[str, Any]:
    """The node's entry in ``meshctl status -o json``; {} when it has none."""
    nodes = [n for n in status_json(control).get("nodes", []) if n["node_id"] == node_id]
    return nodes[0] if nodes else {}


def service_yaml(path: Path, name: str, *addresses: str) -> Path:
    """Writes service ``name`` with ``addresses`` and a 2 s timeout and two attempts."""
    lines = [f"name: {name}", "endpoints:"] + [f"  - address: {a}" for a in addresses]
    if not addresses:
        lines[-1] = "endpoints: []"
    lines += ["policy:", "  timeout: 2s", "  retry: {attempts: 2, retry_on: [UNAVAILABLE]}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def echo(address: str, name: str = "echo") -> config_pb2.Service:
    """Service ``name`` (default ``echo``) with one endpoint."""
    return config_pb2.Service(name=name, endpoints=[config_pb2.Endpoint(address=address)])


async def apply(control: str, *services: config_pb2.Service) -> int:
    """Applies ``services`` through the admin API; returns the store revision."""
    async with grpc.aio.insecure_channel(control) as channel:
        stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
        reply = await stub.ApplyServices(admin_pb2.ApplyServicesRequest(services=services))
        return int(reply.revision)


def health(target: str, service: str = "") -> int:
    """A server's grpc.health.v1 status for ``service`` (the server's own: "")."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def page_url(control: Proc) -> str:
    """The URL of mesh-control's web page (``--http-port``), as its log says."""

    def logged() -> str | None:
        for line in log_lines(control):
            if line.get("event") == "web page serving":
                return str(line["url"])
        return None

    return wait_for(logged, 10, "the web page's URL in mesh-control's log")


# -- process output ---------------------------------------------------------------------------


def records(client: Proc) -> list[dict[str, Any]]:
    """A demo client's calls: one JSON object per line of its stdout."""
    return [json.loads(line) for line in client.lines() if line.startswith("{")]


def log_lines(proc: Proc) -> list[dict[str, Any]]:
    """A daemon's JSON log lines (stderr)."""
    return [json.loads(line) for line in proc.errors().splitlines() if line.startswith("{")]


# -- the agent ---------------------------------------------------------------------------------


def agent_stub(target: str) -> tuple[grpc.Channel, agent_pb2_grpc.AgentServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, agent_pb2_grpc.AgentServiceStub(channel)


def agent_status(target: str) -> agent_pb2.GetAgentStatusResponse:
    with grpc.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        return stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)


def responses_received(target: str) -> dict[str, int]:
    """Responses the agent received from upstream, per type (short name)."""
    return {t.type_url.rsplit(".", 1)[-1]: t.responses_received for t in agent_status(target).types}


def breaker(agent: str, service: str) -> agent_pb2.BreakerStatus | None:
    """The agent's breaker for ``service``; None while it has none."""
    return next((b for b in agent_status(agent).breakers if b.service == service), None)


def register(agent: str, service: str, address: str) -> None:
    """Registers ``address`` for ``service`` through the agent at ``agent``."""
    with grpc.insecure_channel(agent) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(
                registration=node_pb2.Registration(service=service, address=address)
            ),
            timeout=5,
        )


def deregister(agent: str, service: str, address: str) -> None:
    """Removes ``address`` from ``service`` at once, through the agent at ``agent``."""
    with grpc.insecure_channel(agent) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Deregister(
            agent_pb2.DeregisterRequest(service=service, address=address), timeout=5
        )


PLUGIN = """
import asyncio, os
from pathlib import Path

CONTROL = Path(os.environ["PLUGIN_DIR"])


class Flaky:
    # Fails to start while CONTROL/fail-start exists, fails while running while
    # CONTROL/fail-run exists.

    name = "flaky"
    requires = ("cache",)

    async def start(self, ctx):
        ctx.require("cache", object)
        if (CONTROL / "fail-start").exists():
            raise RuntimeError("flaky start failure")

    async def run(self):
        while not (CONTROL / "fail-run").exists():
            await asyncio.sleep(0.05)
        raise RuntimeError("flaky run failure")

    async def stop(self):
        pass
"""


def install_plugin(
    root: Path,
    source: str = PLUGIN,
    module: str = "mesh_test_plugin",
    components: dict[str, str] | None = None,
) -> None:
    """A tiny distribution, installed by putting ``root`` on the agent's path (see
    :func:`plugin_env`): ``module`` with ``source``, giving ``components`` (entry point name
    -> class) to the ``mesh_agent.components`` group; by default component ``flaky``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    name = module.replace("_", "-")
    dist = root / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    entries = "".join(
        f"{entry} = {module}:{cls}\n" for entry, cls in (components or {"flaky": "Flaky"}).items()
    )
    (dist / "entry_points.txt").write_text(f"[mesh_agent.components]\n{entries}")


def plugin_env(procs: MeshProcesses, plugin: Path) -> dict[str, str]:
    """The environment of an agent that loads the plugin installed in ``plugin``."""
    return {"PYTHONPATH": f"{plugin}:{procs.env['PYTHONPATH']}", "PLUGIN_DIR": str(plugin)}


# -- the demo backend --------------------------------------------------------------------------


def configure(
    backend: str,
    fail: str = "",
    delay: float = 0.0,
    read_only: bool = False,
    fail_share: float = 0.0,
) -> int:
    """Tells the demo backend how to answer (``fail``: a status code name, for
    ``fail_share`` of the calls when given; ``delay``: seconds); returns the calls it answered
    so far."""
    request = echo_pb2.ConfigureRequest(
        fail=fail, delay=delay, read_only=read_only, fail_share=fail_share
    )
    with grpc.insecure_channel(backend) as channel:
        reply = echo_pb2_grpc.EchoServiceStub(channel).Configure(request, timeout=5)
    return int(reply.calls)


def backend_calls(backend: str) -> int:
    return configure(backend, read_only=True)


def breaker_setup(
    procs: MeshProcesses, tmp_path: Path, service: str, policy: str, delay: float = 0.0
) -> tuple[str, str, str]:
    """A control server, a backend (``b1``) behind ``service`` with ``policy`` (YAML under
    ``policy:``), and agent node-1; returns their addresses."""
    _, control = procs.start_control()
    extra = ["--delay", str(delay)] if delay else []
    _, backend = procs.start_backend("b1", *extra, proc_name="backend")
    path = tmp_path / f"{service}.yaml"
    path.write_text(
        f"name: {service}\nendpoints: [{{address: '{backend}'}}]\npolicy:\n  {policy}\n"
    )
    meshctl(control, "apply", "-f", str(path))
    _, agent = procs.start_agent(control, "node-1")
    return control, backend, agent


# -- certificates ------------------------------------------------------------------------------


class Pki:
    """A CA and certificates issued from it, under one directory."""

    def __init__(self, root: Path, trust_domain: str = "mesh.test") -> None:
        self.root = root
        self.ca = root / "ca"
        certs.init_ca(self.ca, trust_domain)

    def issue(self, name: str, **kind: object) -> Path:
        out = self.root / name
        certs.issue(self.ca, out, **kind)  # type: ignore[arg-type]
        return out

    flags = staticmethod(tls.flags)

    @staticmethod
    def credentials(directory: Path) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            (directory / "ca.pem").read_bytes(),
            (directory / "key.pem").read_bytes(),
            (directory / "cert.pem").read_bytes(),
        )


def metrics_url(proc: Proc) -> str:
    """The Prometheus endpoint a daemon started with ``--metrics-port`` logged."""

    def find() -> str | None:
        for line in log_lines(proc):
            if line.get("event") == "telemetry" and line.get("prometheus"):
                return str(line["prometheus"])
        return None

    return str(wait_for(find, 10, f"{proc.name}'s metrics endpoint in its log"))


def scrape(url: str) -> str:
    """One Prometheus scrape, as text."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
