"""Load generator for the ``scale`` section: N simulated nodes in one asyncio process.

``python -m bench._loadgen --control HOST:PORT --nodes N --mode sotw|delta [--cpu C]
[--first-index I]``; several of them share the nodes of a large N (``--first-index`` keeps
their node ids apart).

Every node is a real ADS stream on its own TCP connection (its own ``grpc.aio`` channel with
a local subchannel pool) with its own node id. It subscribes like an agent holding local
clients: LDS and CDS wildcard, then RDS for the route names of the listeners it holds, EDS
for the clusters it holds and ``mesh.v1.ServicePolicy`` for the same names. It ACKs every
response: state of the world with ``version_info`` + ``response_nonce``, delta
(``DeltaAggregatedResources``) with ``response_nonce``, keeping each resource's version.

Per node only counters, interned names and versions are kept; names derived from a resource
(a listener's route, a cluster's EDS name) are decoded once per distinct version and shared.
With ``--cpu C`` the process pins itself (every thread) to core C.

Why not ``mesh_xds.testing.AdsClient``, the client the tests and the other sections use: this
process stands in for thousands of nodes on one core, and what it measures is the server's
time to every node's ACK. That client keeps every response, unpacks every resource of every
response to check the protocol's rules and runs a reading task per stream; multiplied by the
nodes, that would make the load generator, not the server, the bottleneck (and its memory the
largest figure on the machine). The rules it would check are the ones the tests check against
the same server with that client.

Driven line by line on stdin; each answer is one JSON line on stdout:

* ``connect``: opens every node (one first, then the rest, ``--ramp`` at a time);
  ``{"event": "served", "nodes": N, "seconds": s}`` once every node has ACKed a response of
  each of the five types, or ``{"event": "failed", "code": ..., "details": ..., ...}`` when
  streams end with an error (``code`` ``UNIMPLEMENTED``: the server has no delta xDS);
* ``arm ID TYPE`` (TYPE: LDS, RDS, CDS, EDS, POLICY): ``{"event": "armed", "id": ID}``; once
  every node has ACKed a response of TYPE received after the arm, ``{"event": "acked",
  "id": ID, "t_first": ..., "t_last": ..., "ack_t": [...], "versions": k}``, where ``ack_t``
  holds per node the ``time.time()`` right after its ACK was written and ``versions`` the
  number of distinct versions ACKed (SotW; 1 when every node converged on the same one);
* ``stats``: ``{"event": "stats", "rss_kb": ..., "alive": n, "errors": k}``;
* ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

SOTW: Final = "sotw"
DELTA: Final = "delta"
SERVE_TIMEOUT: Final = 300.0
SHOWN_ERRORS: Final = 3


def pin(cpu: int) -> None:
    """Pins this process, every thread it has now and every one it starts later, to ``cpu``."""
    os.sched_setaffinity(0, {cpu})
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            continue


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._loadgen", description=__doc__)
    parser.add_argument("--control", required=True, help="HOST:PORT of mesh-control")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--mode", choices=(SOTW, DELTA), default=SOTW)
    parser.add_argument("--cpu", type=int, help="pin to this core")
    parser.add_argument("--ramp", type=int, default=50, help="nodes connecting at once")
    parser.add_argument("--node-prefix", default="scale")
    parser.add_argument(
        "--first-index", type=int, default=0, help="index of the first node (several generators)"
    )
    args = parser.parse_args()
    if args.cpu is not None:
        pin(args.cpu)  # before grpc starts its threads: they inherit the mask
    Generator(args).serve()


class Node:
    """One simulated node. Indexes into the per-type lists follow ``Generator.types``."""

    __slots__ = ("ack_t", "acks", "base", "derived", "index", "names", "served", "versions")

    def __init__(self, index: int, delta: bool) -> None:
        self.index = index
        self.acks = [0, 0, 0, 0, 0]
        # SotW: the version ACKed per type; delta: name -> version per type.
        self.versions: list[Any] = [{} for _ in range(5)] if delta else ["", "", "", "", ""]
        # SotW: the names subscribed per type (shared tuples); delta: the subscribed set.
        self.names: list[Any] = [(), (), (), (), ()]
        # Delta only: what held listeners / clusters reference, name -> derived name.
        self.derived: tuple[dict[str, str], dict[str, str]] | None = ({}, {}) if delta else None
        self.served = False
        self.base = -1  # acks of the armed type at the arm; -1: not armed or already acked
        self.ack_t = 0.0


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        import grpc
        from envoy.config.cluster.v3 import cluster_pb2
        from envoy.config.listener.v3 import listener_pb2
        from envoy.extensions.filters.network.http_connection_manager.v3 import (
            http_connection_manager_pb2 as hcm_pb2,
        )
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        from mesh_xds.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, SERVICE_POLICY

        self.grpc = grpc
        self.pb = discovery_pb2
        self.ads = ads_pb2_grpc
        self.listener_cls = listener_pb2.Listener
        self.cluster_cls = cluster_pb2.Cluster
        self.hcm_cls = hcm_pb2.HttpConnectionManager
        self.args = args
        self.delta = args.mode == DELTA
        self.LDS, self.CDS, self.RDS, self.EDS, self.POLICY = range(5)
        self.types = (LISTENER, CLUSTER, ROUTE, ENDPOINT, SERVICE_POLICY)
        self.short = {"LDS": 0, "CDS": 1, "RDS": 2, "EDS": 3, "POLICY": 4}
        self.type_index = {url: i for i, url in enumerate(self.types)}
        first = args.first_index
        self.nodes = [Node(i, self.delta) for i in range(first, first + args.nodes)]
        # Derived names, decoded once per distinct content and shared by every node.
        self._sotw_names: dict[tuple[int, str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._delta_names: dict[tuple[int, str, str], str] = {}
        self.served = 0
        self.alive = 0
        self.errors = 0
        self.shown: list[dict[str, Any]] = []
        self.armed: tuple[str, int] | None = None
        self.pending = 0
        self.arm_versions: set[str] = set()
        self.changed = asyncio.Event()
        self.channels: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    # -- control channel --------------------------------------------------------------------

    def serve(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line.strip())
            loop.call_soon_threadsafe(commands.put_nowait, None)

        threading.Thread(target=read, daemon=True, name="loadgen-stdin").start()
        emit({"event": "ready", "pid": os.getpid(), "cpu": sorted(os.sched_getaffinity(0))})
        try:
            while (line := await commands.get()) is not None:
                command, _, arg = line.partition(" ")
                if command == "connect":
                    emit(await self.connect())
                elif command == "arm":
                    ident, type_name = arg.split()
                    self.arm(ident, self.short[type_name])
                elif command == "stats":
                    emit(self.stats())
                elif command == "quit":
                    break
                elif command:
                    emit({"event": "error", "details": f"unknown command {command!r}"})
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"event": "stats", "rss_kb": rss_kb(), "alive": self.alive, "errors": self.errors}

    async def connect(self) -> dict[str, Any]:
        started = time.monotonic()
        ramp = asyncio.Semaphore(max(1, self.args.ramp))
        first, *rest = self.nodes
        self.tasks.append(asyncio.create_task(self._node(first, ramp)))
        if not await self._wait(lambda: first.served, started):
            return self._failed(started)
        for node in rest:
            await ramp.acquire()
            self.tasks.append(asyncio.create_task(self._node(node, ramp, acquired=True)))
        if not await self._wait(lambda: self.served == len(self.nodes), started):
            return self._failed(started)
        return {
            "event": "served",
            "nodes": self.served,
            "seconds": round(time.monotonic() - started, 3),
            "rss_kb": rss_kb(),
        }

    async def _wait(self, done: Any, started: float) -> bool:
        """Waits for ``done()``; False when a stream failed or the time ran out first."""
        while not done():
            if self.errors:
                return False
            left = SERVE_TIMEOUT - (time.monotonic() - started)
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return False
        return True

    def _failed(self, started: float) -> dict[str, Any]:
        shown = self.shown[0] if self.shown else {"code": "TIMEOUT", "details": ""}
        return {
            "event": "failed",
            **shown,
            "errors": self.errors,
            "served": self.served,
            "seconds": round(time.monotonic() - started, 3),
        }

    def arm(self, ident: str, type_index: int) -> None:
        for node in self.nodes:
            node.base = node.acks[type_index]
            node.ack_t = 0.0
        self.armed = (ident, type_index)
        self.pending = len(self.nodes)
        self.arm_versions = set()
        emit({"event": "armed", "id": ident})

    def _acked(self, node: Node, type_index: int, version: str) -> None:
        """Bookkeeping right after an ACK of ``type_index`` went out."""
        node.acks[type_index] += 1
        if not node.served and all(node.acks):
            node.served = True
            self.served += 1
            self.changed.set()
        armed = self.armed
        if armed is not None and armed[1] == type_index and node.base >= 0:
            node.ack_t = time.time()
            node.base = -1
            self.arm_versions.add(version)
            self.pending -= 1
            if self.pending == 0:
                self.armed = None
                times = [n.ack_t for n in self.nodes]
                emit(
                    {
                        "event": "acked",
                        "id": armed[0],
                        "t_first": min(times),
                        "t_last": max(times),
                        "ack_t": [round(t, 6) for t in times],
                        "versions": len(self.arm_versions),
                    }
                )

    # -- one node ---------------------------------------------------------------------------

    async def _node(self, node: Node, ramp: asyncio.Semaphore, acquired: bool = False) -> None:
        if not acquired:
            await ramp.acquire()
        released = False
        options = [("grpc.use_local_subchannel_pool", 1)]
        channel = self.grpc.aio.insecure_channel(self.args.control, options=options)
        self.channels.append(channel)
        stub = self.ads.AggregatedDiscoveryServiceStub(channel)
        node_id = f"{self.args.node_prefix}-{self.args.mode}-{node.index:05d}"
        self.alive += 1
        try:
            if self.delta:
                call = stub.DeltaAggregatedResources()
                await self._delta_start(call, node, node_id)
            else:
                call = stub.StreamAggregatedResources()
                await self._sotw_start(call, node, node_id)
            while True:
                response = await call.read()
                if response is self.grpc.aio.EOF:
                    break
                if self.delta:
                    await self._delta_response(call, node, response)
                else:
                    await self._sotw_response(call, node, response)
                if not released and node.served:
                    released = True
                    ramp.release()
        except self.grpc.aio.AioRpcError as error:
            self._error(node, error.code().name, error.details() or "")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._error(node, type(error).__name__, str(error))
        finally:
            self.alive -= 1
            if not released:
                ramp.release()

    def _error(self, node: Node, code: str, details: str) -> None:
        self.errors += 1
        if len(self.shown) < SHOWN_ERRORS:
            self.shown.append({"code": code, "details": details[:300], "node": node.index})
        self.changed.set()

    # -- state of the world -----------------------------------------------------------------

    def _request(self, type_index: int, names: Iterable[str], version: str = "") -> Any:
        return self.pb.DiscoveryRequest(
            type_url=self.types[type_index], resource_names=names, version_info=version
        )

    async def _sotw_start(self, call: Any, node: Node, node_id: str) -> None:
        first = self._request(self.LDS, ())
        first.node.id = node_id
        await call.write(first)
        await call.write(self._request(self.CDS, ()))

    async def _sotw_response(self, call: Any, node: Node, response: Any) -> None:
        index = self.type_index.get(response.type_url)
        if index is None:
            return
        version = sys.intern(response.version_info)
        ack = self.pb.DiscoveryRequest(
            type_url=response.type_url,
            version_info=version,
            resource_names=node.names[index],
            response_nonce=response.nonce,
        )
        await call.write(ack)
        node.versions[index] = version
        self._acked(node, index, version)
        if index == self.LDS:
            routes, _ = self._sotw_derived(index, version, response.resources)
            await self._sotw_subscribe(call, node, self.RDS, routes)
        elif index == self.CDS:
            clusters, endpoints = self._sotw_derived(index, version, response.resources)
            await self._sotw_subscribe(call, node, self.EDS, endpoints)
            await self._sotw_subscribe(call, node, self.POLICY, clusters)

    async def _sotw_subscribe(
        self, call: Any, node: Node, index: int, names: tuple[str, ...]
    ) -> None:
        if names != node.names[index]:
            node.names[index] = names
            await call.write(self._request(index, names, node.versions[index]))

    def _sotw_derived(
        self, index: int, version: str, resources: Iterable[Any]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """LDS: (route names, ()); CDS: (cluster names, EDS names); shared per version."""
        key = (index, version)
        found = self._sotw_names.get(key)
        if found is None:
            pairs = [self._decode(index, packed.value) for packed in resources]
            found = (
                tuple(sorted({sys.intern(a) for a, _ in pairs})),
                tuple(sorted({sys.intern(b) for _, b in pairs})),
            )
            self._sotw_names[key] = found
        return found

    def _decode(self, index: int, value: bytes) -> tuple[str, str]:
        """LDS: (route name, listener name); CDS: (cluster name, EDS name)."""
        if index == self.LDS:
            listener = self.listener_cls.FromString(value)
            manager = self.hcm_cls()
            route = ""
            if listener.api_listener.api_listener.Unpack(manager) and manager.HasField("rds"):
                route = manager.rds.route_config_name
            return route or listener.name, listener.name
        cluster = self.cluster_cls.FromString(value)
        return cluster.name, cluster.eds_cluster_config.service_name or cluster.name

    # -- delta ------------------------------------------------------------------------------

    async def _delta_start(self, call: Any, node: Node, node_id: str) -> None:
        for position, index in enumerate((self.LDS, self.CDS)):
            request = self.pb.DeltaDiscoveryRequest(
                type_url=self.types[index],
                resource_names_subscribe=["*"],
                initial_resource_versions=node.versions[index],
            )
            if position == 0:
                request.node.id = node_id
            node.names[index] = frozenset(("*",))
            await call.write(request)

    async def _delta_response(self, call: Any, node: Node, response: Any) -> None:
        index = self.type_index.get(response.type_url)
        if index is None:
            return
        await call.write(
            self.pb.DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        )
        held: dict[str, str] = node.versions[index]
        derived = node.derived[0 if index == self.LDS else 1] if node.derived else None
        version = sys.intern(response.system_version_info)
        for name in response.removed_resources:
            held.pop(name, None)
            if derived is not None and index in (self.LDS, self.CDS):
                derived.pop(name, None)
        for resource in response.resources:
            name = sys.intern(resource.name)
            held[name] = sys.intern(resource.version)
            if derived is not None and index in (self.LDS, self.CDS):
                derived[name] = self._delta_derived(index, name, resource)
        self._acked(node, index, version)
        if node.derived is not None and index in (self.LDS, self.CDS):
            wanted = frozenset(node.derived[0 if index == self.LDS else 1].values())
            if index == self.LDS:
                await self._delta_subscribe(call, node, self.RDS, wanted)
            else:
                await self._delta_subscribe(call, node, self.EDS, wanted)
                clusters = frozenset(node.derived[1])
                await self._delta_subscribe(call, node, self.POLICY, clusters)

    def _delta_derived(self, index: int, name: str, resource: Any) -> str:
        key = (index, name, resource.version)
        found = self._delta_names.get(key) if resource.version else None
        if found is None:
            route_or_cluster, eds = self._decode(index, resource.resource.value)
            found = sys.intern(route_or_cluster if index == self.LDS else eds)
            if resource.version:
                self._delta_names[key] = found
        return found

    async def _delta_subscribe(
        self, call: Any, node: Node, index: int, wanted: frozenset[str]
    ) -> None:
        current: frozenset[str] = node.names[index] or frozenset()
        if wanted == current:
            return
        node.names[index] = wanted
        await call.write(
            self.pb.DeltaDiscoveryRequest(
                type_url=self.types[index],
                resource_names_subscribe=sorted(wanted - current),
                resource_names_unsubscribe=sorted(current - wanted),
            )
        )


if __name__ == "__main__":
    main()
