"""Helpers for tests that run mesh-agent processes."""

from __future__ import annotations

from pathlib import Path

import grpc

from mesh.v1 import agent_pb2, agent_pb2_grpc
from tests.conftest import Proc, Processes, wait_for


def start_agent(
    procs: Processes,
    control: str,
    node_id: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[Proc, str]:
    """Starts mesh-agent; returns it and its unix socket target (``unix:PATH``)."""
    socket_path = procs.workdir / f"{node_id}.sock"
    state_dir = procs.workdir / f"{node_id}-state"
    ready = procs.workdir / f"{node_id}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.python(
        node_id,
        "mesh_agent",
        "run",
        "--control",
        control,
        "--node-id",
        node_id,
        "--socket",
        str(socket_path),
        "--state-dir",
        str(state_dir),
        "--ready-file",
        str(ready),
        *extra,
        env=env or {},
    )

    def address() -> str | None:
        if not proc.alive:
            raise AssertionError(f"{node_id} exited:\n{proc.errors()[-3000:]}")
        return ready.read_text().split()[0] if ready.exists() else None

    return proc, wait_for(address, 20, f"agent {node_id} to be ready")


def agent_status(target: str) -> agent_pb2.GetAgentStatusResponse:
    with grpc.insecure_channel(target) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        return stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(), timeout=5)


def responses_received(target: str) -> dict[str, int]:
    return {t.type_url.rsplit(".", 1)[-1]: t.responses_received for t in agent_status(target).types}


def state_dir(procs: Processes, node_id: str) -> Path:
    return procs.workdir / f"{node_id}-state"
