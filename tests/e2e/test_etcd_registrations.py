"""Several control servers on one etcd share what nodes tell them: registrations (kept by an
etcd lease of the server holding the node's stream) and node status."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from mesh.v1 import agent_pb2, agent_pb2_grpc, node_pb2
from tests.conftest import Processes, wait_for
from tests.e2e.agentutil import agent_status, start_agent
from tests.e2e.test_control_xds import calls, meshctl, start_backend, start_client
from tests.etcd_fixture import EtcdServer, etcd

__all__ = ["etcd"]  # the fixture, imported to register it
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_registrations_survive_the_death_of_their_control_server(
    procs: Processes, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    grace = "3s"
    c1_proc, c1 = procs.start_ready(
        "control-1",
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--registration-grace",
        grace,
    )
    _, c2 = procs.start_ready(
        "control-2",
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        store,
        "--registration-grace",
        grace,
    )
    backend = start_backend(procs, "registered")
    _, owner = start_agent(procs, f"{c1},{c2}", "node-1")
    _, other = start_agent(procs, f"{c2},{c1}", "node-2")
    with grpc.insecure_channel(owner) as channel:
        agent_pb2_grpc.AgentServiceStub(channel).Register(
            agent_pb2.RegisterRequest(
                registration=node_pb2.Registration(service="reg", address=backend)
            ),
            timeout=5,
        )
    client = start_client(procs, other, "reg")
    wait_for(
        lambda: any(c.get("backend") == "registered" for c in calls(client)),
        30,
        "node-2 (on control-2) to reach the endpoint node-1 registered on control-1",
    )

    # Either server shows both nodes, with the registration.
    for control in (c1, c2):
        nodes = {
            n["node_id"]: n for n in json.loads(meshctl(control, "status", "-o", "json"))["nodes"]
        }
        assert {"node-1", "node-2"} <= set(nodes), (control, nodes)
        assert nodes["node-1"]["registrations"][0]["address"] == backend

    c1_proc.kill()
    wait_for(lambda: agent_status(owner).upstream == c2, 20, "node-1 to fail over to control-2")
    seen = len(calls(client))
    time.sleep(5)  # longer than the grace: the lease of the dead server has run out by now
    after = calls(client)[seen:]
    assert after and all(c["ok"] for c in after), [c for c in after if not c["ok"]][:3]
    nodes = {n["node_id"]: n for n in json.loads(meshctl(c2, "status", "-o", "json"))["nodes"]}
    assert nodes["node-1"]["registrations"][0]["address"] == backend

    # The agent itself goes: its lease is no longer kept, and the endpoint goes everywhere.
    owner_proc = next(p for p in procs.procs if p.name == "node-1")
    owner_proc.stop()
    stopped = time.monotonic()
    seen = len(calls(client))
    wait_for(
        lambda: any(not c["ok"] for c in calls(client)[seen:]),
        20,
        "the endpoint to go once its agent is gone",
    )
    assert time.monotonic() - stopped >= 2.5, "dropped before the grace period"
