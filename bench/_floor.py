"""The floor of the ``scale`` section: a minimal ``grpc.aio`` ADS server, with no mesh code
in its serving path, holding the same streams as mesh-control and writing them the same bytes.

``python -m bench._floor --changes R [--cpu C]`` listens on ``127.0.0.1:0``.

It answers the first request of each type on a stream with every resource of the type (the
resources mesh-control builds from the same services, serialised once at start), reads the
ACKs, and on ``push K`` writes change K's EDS response (the one mesh-control sends for the
same change: the changed assignment, SotW and delta alike) to every stream and reads each
stream's ACK of it. Every response, its nonce included, is one ``bytes`` object written as
it is (a pass-through serializer), the same for every stream. One task per stream: it reads
until the stream has been answered and has ACKed all five types, then waits for a push,
writes it and reads until its ACK. What it costs per stream is what ``grpc.aio`` costs to
hold a stream, write a message and read a request on it: the floor that mesh-control's own
figures are read against, measured in the same run. Its garbage collector is set as
mesh-control sets its own (``control.server.tune_collector``), so that only the code differs.

Driven line by line on stdin; answers one JSON line each on stdout: first
``{"event": "ready", "address": ..., "pid": ...}``; ``push K``: ``{"event": "pushed", "id":
K}`` once the writes have been started; ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from bench._loadgen import emit, pin
from bench.control import filler_services, make_service
from control.resources import build_resources
from control.server import tune_collector
from mesh_xds.cache import SnapshotCache
from mesh_xds.snapshot import Snapshot
from mesh_xds.types import ENDPOINT, PUSH_ORDER
from mesh_xds.wire import ADS_SERVICE

SERVICES: Final = 5
CHANGED: Final = "svc-0000"
SERVER_ID: Final = "floor"


def changed_service(change: int) -> Any:
    """Change ``change`` of the section: ``svc-0000`` with its endpoints' ports moved."""
    port = 50100 + change
    return make_service(CHANGED, (f"10.0.0.1:{port}", f"10.0.0.2:{port}"))


def _sotw(snapshot: Snapshot, type_url: str, nonce: str, names: set[str] | None = None) -> bytes:
    _, _, version = snapshot.selection(type_url, True, frozenset())
    resources = snapshot.resources.get(type_url, {})
    response = discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=type_url,
        nonce=nonce,
        resources=[r.packed for name, r in resources.items() if names is None or name in names],
    )
    response.control_plane.identifier = SERVER_ID
    data: bytes = response.SerializeToString()
    return data


def _delta(snapshot: Snapshot, type_url: str, nonce: str, names: set[str] | None = None) -> bytes:
    resources = snapshot.resources.get(type_url, {})
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=snapshot.id, type_url=type_url, nonce=nonce
    )
    response.resources.extend(
        r.delta for name, r in resources.items() if names is None or name in names
    )
    response.control_plane.identifier = SERVER_ID
    data: bytes = response.SerializeToString()
    return data


class Floor:
    """The responses, built before any stream opens, and the streams' one task each."""

    def __init__(self, changes: int) -> None:
        cache = SnapshotCache(build_resources)
        services = filler_services(SERVICES)
        cache.set_services(1, services)
        node = base_pb2.Node()
        base = cache.snapshot_for(node)
        self.initial = {
            "sotw": {t: _sotw(base, t, f"i{i}") for i, t in enumerate(PUSH_ORDER)},
            "delta": {t: _delta(base, t, f"i{i}") for i, t in enumerate(PUSH_ORDER)},
        }
        self.pushes: dict[str, list[tuple[bytes, str]]] = {"sotw": [], "delta": []}
        for change in range(changes):
            others = [s for s in services if s.name != CHANGED]
            cache.set_services(change + 2, [changed_service(change), *others])
            snapshot = cache.snapshot_for(node)
            nonce = f"p{change}"
            names = set(snapshot.changed_since(base, ENDPOINT))
            self.pushes["sotw"].append((_sotw(snapshot, ENDPOINT, nonce, names), nonce))
            self.pushes["delta"].append((_delta(snapshot, ENDPOINT, nonce, names), nonce))
            base = snapshot
        self.pushed = 0
        self._wake: asyncio.Future[None] | None = None

    def push(self, change: int) -> None:
        self.pushed = change + 1
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._wake = None

    async def _next_push(self) -> None:
        if self._wake is None:
            self._wake = asyncio.get_running_loop().create_future()
        await self._wake  # every waiting stream on one future: no task, no timer

    async def serve(self, flavour: str, context: Any) -> None:
        initial = self.initial[flavour]
        answered: set[str] = set()
        acks = 0
        while len(answered) < len(initial) or acks < len(initial):
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            if request.response_nonce:
                acks += 1
            if request.type_url in initial and request.type_url not in answered:
                answered.add(request.type_url)
                await context.write(initial[request.type_url])
        done = self.pushed
        pushes = self.pushes[flavour]
        while True:
            while done >= self.pushed:
                await self._next_push()
            data, nonce = pushes[done]
            done += 1
            await context.write(data)
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                if request.response_nonce == nonce:
                    break

    async def StreamAggregatedResources(self, requests: Any, context: Any) -> None:
        await self.serve("sotw", context)

    async def DeltaAggregatedResources(self, requests: Any, context: Any) -> None:
        await self.serve("delta", context)


def _handlers(floor: Floor) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        ADS_SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                floor.StreamAggregatedResources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=None,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                floor.DeltaAggregatedResources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=None,
            ),
        },
    )


async def _main(args: argparse.Namespace) -> None:
    floor = Floor(args.changes)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(floor),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tune_collector()  # the garbage collector as mesh-control sets it: only the code differs
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read, daemon=True, name="floor-stdin").start()
    emit({"event": "ready", "address": f"127.0.0.1:{port}", "pid": os.getpid()})
    try:
        while (line := await commands.get()) is not None:
            command, _, arg = line.partition(" ")
            if command == "push":
                floor.push(int(arg))
                emit({"event": "pushed", "id": int(arg)})
            elif command == "quit":
                break
            elif command:
                emit({"event": "error", "details": f"unknown command {command!r}"})
    finally:
        await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._floor", description=__doc__)
    parser.add_argument("--changes", type=int, required=True, help="changes to prepare")
    parser.add_argument("--cpu", type=int, help="pin to this core")
    args = parser.parse_args()
    if args.cpu is not None:
        pin(args.cpu)  # before grpc starts its threads: they inherit the mask
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
