"""What the agent's state dir promises (:mod:`mesh_agent.daemon.journal`): an agent killed
(SIGKILL) at random moments of a stream of pushes is restarted, each time, with no control
server to reach, and serves grpcio's xDS client a whole config, the last one the killed agent
served or one it received after that, never a damaged or older one; and an agent upgraded in
place serves the single state file its earlier version left, then keeps the journal."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from pathlib import Path

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from control.resources import build_resources
from mesh.v1 import admin_pb2, admin_pb2_grpc, config_pb2
from mesh_agent.daemon.journal import JOURNAL_FILE, parse
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.conftest import wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, records

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

KILLS = 3
PUSH_EVERY = 0.06  # the admin API takes 20 writes a second from one caller
UNREACHABLE = "127.0.0.1:1"


def echo_at(generation: int, backends: list[str]) -> config_pb2.Service:
    """Generation ``generation`` of echo: one of the two backends, the generation in its
    endpoint weight (generation + 1), so a served assignment says which push it came from."""
    endpoint = config_pb2.Endpoint(address=backends[generation % 2], weight=generation + 1)
    return config_pb2.Service(name="echo", endpoints=[endpoint])


class Pusher(threading.Thread):
    """Applies generation after generation of echo until stopped; ``applied`` is the last
    generation the control server took."""

    def __init__(self, control: str, backends: list[str]) -> None:
        super().__init__(daemon=True)
        self.control = control
        self.backends = backends
        self.applied = 0
        self.stopping = threading.Event()

    def apply(self, stub: admin_pb2_grpc.MeshAdminServiceStub, generation: int) -> None:
        request = admin_pb2.ApplyServicesRequest(services=[echo_at(generation, self.backends)])
        stub.ApplyServices(request, timeout=10)
        self.applied = generation

    def run(self) -> None:
        with grpc.insecure_channel(self.control) as channel:
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            while not self.stopping.wait(PUSH_EVERY):
                try:
                    self.apply(stub, self.applied + 1)
                except grpc.RpcError as error:
                    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    time.sleep(0.1)


async def _served(agent: str) -> int:
    async with AdsClient(agent, "crash-test") as client:
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):  # what grpcio asks for echo
            client.subscribe(type_url, ["echo"])
        await client.wait_for(lambda c: bool(c.of_type(ENDPOINT)), 15)
        assignment = endpoint_pb2.ClusterLoadAssignment()
        client.of_type(ENDPOINT)[-1].resources[0].Unpack(assignment)
        weight = assignment.endpoints[0].lb_endpoints[0].load_balancing_weight.value
        return int(weight) - 1


def served_generation(agent: str) -> int:
    """The generation of echo's assignment the agent serves on a local ADS stream (which
    subscribes to echo's four resources, so that the agent holds them all)."""
    return asyncio.run(_served(agent))


def kill_and_restart(
    procs: MeshProcesses, control: str, pusher: Pusher, rng: random.Random, kill: int
) -> None:
    """One round: an agent follows the pushes, is killed, and one restarted on its state dir
    with the control server out of reach serves what the killed one served, or later."""
    proc, agent = procs.start_agent(control, "node-1")
    # Pushes flow through the agent: one served after the last restart's.
    first = served_generation(agent)
    wait_for(lambda: served_generation(agent) > first, 20, "the agent to follow the pushes")
    seen = served_generation(agent)
    time.sleep(rng.uniform(0, 4 * PUSH_EVERY))
    proc.kill()  # SIGKILL, wherever it was

    restarted, agent = procs.start_agent(UNREACHABLE, "node-1")
    assert not agent_status(agent).connected
    after = served_generation(agent)
    assert seen <= after <= pusher.applied, (kill, seen, after, pusher.applied)
    assert "rejected" not in restarted.errors(), restarted.errors()[-2000:]
    # grpcio's own xDS client gets the whole config (listener, route, cluster, endpoints)
    # and calls the backend of that generation.
    client = procs.start_client(agent, "echo", node=f"client-{kill}")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "a call on the state")
    called = {c["backend"] for c in records(client) if c["ok"]}
    assert called == {f"backend-{after % 2}"}, (after, records(client)[:5])
    client.stop()
    restarted.stop()


def test_an_agent_killed_during_pushes_restarts_on_the_last_config_it_served(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control("--debounce", "0s")
    backends = [procs.start_backend(f"backend-{i}")[1] for i in (0, 1)]
    pusher = Pusher(control, backends)
    with grpc.insecure_channel(control) as channel:
        pusher.apply(admin_pb2_grpc.MeshAdminServiceStub(channel), 0)
    pusher.start()
    rng = random.Random()
    try:
        for kill in range(KILLS):
            kill_and_restart(procs, control, pusher, rng, kill)
    finally:
        pusher.stopping.set()
        pusher.join(10)
    assert pusher.applied > KILLS, "the pushes did not go on"
    journal = procs.agent_state_dir("node-1") / JOURNAL_FILE
    assert parse(journal.read_bytes(), "node-1").types


def test_an_upgraded_agent_serves_the_state_file_of_its_earlier_version(
    procs: MeshProcesses,
) -> None:
    _, backend = procs.start_backend("backend-0")
    state = procs.agent_state_dir("node-1")
    state.mkdir()
    # What an agent before the journal left: one JSON file of every resource, base64.
    types = {
        type_url: {
            "version": "v1",
            "resources": {
                name: base64.b64encode(message.SerializeToString(deterministic=True)).decode()
                for name, message in by_name.items()
            },
        }
        for type_url, by_name in build_resources([echo_at(0, [backend])], "").items()
    }
    document = {"format": 1, "node_id": "node-1", "saved_at": time.time(), "types": types}
    (state / "config.json").write_text(json.dumps(document))

    proc, agent = procs.start_agent(UNREACHABLE, "node-1")
    client = procs.start_client(agent, "echo")
    wait_for(lambda: any(c["ok"] for c in records(client)), 30, "a call on the old state file")
    assert not (state / "config.json").exists()
    journal = parse((state / JOURNAL_FILE).read_bytes(), "node-1")
    assert journal.types[ENDPOINT].resources.keys() == {"echo"}
    assert "rejected" not in proc.errors()
    # Restarted again (the control plane still away), it serves from the journal.
    client.stop()
    proc.stop()
    _, agent = procs.start_agent(UNREACHABLE, "node-1")
    assert served_generation(agent) == 0
