"""Several control servers on one etcd share what nodes tell them: registrations (kept by an
etcd lease of the server holding the node's stream) and node status. A departed node's
registrations last at least the grace and at most the grace plus one renewal interval, whether
its agent stopped or the server holding it died."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Proc, wait_for
from tests.e2e.conftest import EtcdServer, MeshProcesses
from tests.e2e.helpers import agent_status, records, register, status_json
from tests.e2e.lapse import (
    DETECTION_MARGIN,
    RENEWAL_INTERVAL,
    etcd_key_gone,
    etcd_record,
    logged_at,
    registrations_gone,
    within_bounds,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

GRACE = 3.0
NODE_KEY = "/mesh/nodes/{}"


def start_controls(procs: MeshProcesses, etcd: EtcdServer, count: int) -> list[tuple[Proc, str]]:
    return [
        procs.start_control(
            "--registration-grace", f"{GRACE:g}s", store=etcd.url("/mesh"), name=f"control-{i}"
        )
        for i in range(1, count + 1)
    ]


def registered_in_etcd(etcd: EtcdServer, node: str, address: str) -> bool:
    record = etcd_record(etcd, NODE_KEY.format(node))
    return record is not None and [r.address for r in record.registrations] == [address]


def test_registrations_survive_the_death_of_their_control_server(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    grace = "3s"
    c1_proc, c1 = procs.start_control("--registration-grace", grace, store=store, name="control-1")
    c2_proc, c2 = procs.start_control("--registration-grace", grace, store=store, name="control-2")
    _, backend = procs.start_backend("registered")
    _, owner = procs.start_agent(f"{c1},{c2}", "node-1")
    _, other = procs.start_agent(f"{c2},{c1}", "node-2")
    register(owner, "reg", backend)
    client = procs.start_client(other, "reg")
    wait_for(
        lambda: any(c.get("backend") == "registered" for c in records(client)),
        30,
        "node-2 (on control-2) to reach the endpoint node-1 registered on control-1",
    )

    # Either server shows both nodes, with the registration.
    for control in (c1, c2):
        nodes = {n["node_id"]: n for n in status_json(control)["nodes"]}
        assert {"node-1", "node-2"} <= set(nodes), (control, nodes)
        assert nodes["node-1"]["registrations"][0]["address"] == backend

    c1_proc.kill()
    wait_for(lambda: agent_status(owner).upstream == c2, 20, "node-1 to fail over to control-2")
    seen = len(records(client))
    time.sleep(5)  # longer than the grace: the lease of the dead server has run out by now
    after = records(client)[seen:]
    assert after and all(c["ok"] for c in after), [c for c in after if not c["ok"]][:3]
    nodes = {n["node_id"]: n for n in status_json(c2)["nodes"]}
    assert nodes["node-1"]["registrations"][0]["address"] == backend

    # The agent itself goes: its endpoint goes everywhere, the grace after its stream ended on
    # control-2.
    owner_proc = procs.named("node-1")
    stopping = time.time()
    owner_proc.stop()
    departed = logged_at(c2_proc, "node disconnected", "node-1", after=stopping)
    gone = etcd_key_gone(etcd, NODE_KEY.format("node-1"))
    assert within_bounds(gone - departed, GRACE), f"lapsed {gone - departed:.2f}s after the node"
    seen = len(records(client))
    wait_for(
        lambda: any(not c["ok"] for c in records(client)[seen:]),
        20,
        "the endpoint to go once its agent is gone",
    )


def test_a_stopped_agents_registrations_last_the_grace(
    procs: MeshProcesses, etcd: EtcdServer
) -> None:
    """The agent stops, its control server stays: measured from the server's own log line of
    the stream's end to the record's disappearance from etcd."""
    [(control_proc, control)] = start_controls(procs, etcd, 1)
    agent_proc, agent = procs.start_agent(control, "node-1")
    register(agent, "reg", "127.0.0.1:7001")
    wait_for(lambda: registered_in_etcd(etcd, "node-1", "127.0.0.1:7001"), 20, "the record")
    time.sleep(1.6)  # the node has been up a while, longer than a lease renewal period

    stopping = time.time()
    agent_proc.stop()
    departed = logged_at(control_proc, "node disconnected", "node-1", after=stopping)
    gone = etcd_key_gone(etcd, NODE_KEY.format("node-1"))
    lapse = gone - departed
    assert within_bounds(lapse, GRACE), f"lapsed {lapse:.2f}s after the node (grace {GRACE}s)"
    registrations_gone(control, "node-1", timeout=5)  # and from the server's status


def test_registrations_of_a_node_whose_server_died_last_the_grace(
    procs: MeshProcesses, etcd: EtcdServer
) -> None:
    """The server holding the node dies and the node cannot fail over (it knows only that
    server): measured from the server's death to the record's disappearance from etcd."""
    (holder_proc, holder), (_, other) = start_controls(procs, etcd, 2)
    _, agent = procs.start_agent(holder, "node-1")
    register(agent, "reg", "127.0.0.1:7001")
    wait_for(lambda: registered_in_etcd(etcd, "node-1", "127.0.0.1:7001"), 20, "the record")
    time.sleep(1.6)  # the node has been up a while, longer than a lease renewal period

    before = time.time()
    holder_proc.kill()
    died = time.time()  # the server is known dead from here on
    gone = etcd_key_gone(etcd, NODE_KEY.format("node-1"))
    assert gone - died >= GRACE, f"lapsed {gone - died:.2f}s after the server died"
    assert gone - before <= GRACE + RENEWAL_INTERVAL + DETECTION_MARGIN, (
        f"lapsed {gone - before:.2f}s after the server died"
    )
    # The surviving server stops serving it on its next read.
    registrations_gone(other, "node-1", timeout=5)
