"""The shared node state's loop ends when cancelled, also when a node's stream ended in the
same loop step: that is how a control server stops (its streams are cut, waking the loop, then
its tasks are cancelled), and a loop that ran on kept the server from exiting."""

from __future__ import annotations

import asyncio

import pytest

from control.nodes import ConnectedNodes
from control.registry import Registrations
from control.shared_nodes import SharedNodes
from control.store.etcd import EtcdStore

pytestmark = pytest.mark.timeout(10)


async def test_the_loop_ends_when_cancelled_as_a_node_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registrations = Registrations(grace=3)
    store = EtcdStore("127.0.0.1:1")  # never reached: the sync itself is left out
    shared = SharedNodes(store, registrations, ConnectedNodes(registrations), "server-1", ttl=3)
    syncs: list[None] = []

    async def sync() -> None:
        syncs.append(None)

    monkeypatch.setattr(shared, "_sync", sync)
    registrations.connected("node-1")
    task = asyncio.create_task(shared.run())
    await asyncio.sleep(0.05)  # waiting for the next sync

    registrations.disconnected("node-1")  # wakes the loop...
    task.cancel()  # ...in the same step as the server's stop cancels it
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled(), f"still running, {len(syncs)} syncs after the cancel"
