"""A server or a caller process for tests/e2e/test_mtls.py, each with its own bootstrap (one
per process, as grpcio reads it).

    python -m tests.e2e.mtls_peer serve --service web --flavour sync|aio --agent unix:... \\
        --node-id N --ready-file F
    python -m tests.e2e.mtls_peer call --agent unix:... --node-id N --commands DIR \\
        [--identity NAME]

The server answers ``/test.v1.Peer/Who`` (and ``/test.v1.Peer/Admin``, the same) with JSON:
the service it serves and the caller's SPIFFE id as its TLS auth context has it (empty over
plaintext). The caller serves commands
(:mod:`tests.e2e.commands`): ``{"call": SERVICE, "method": "Who" | "Admin", "metadata":
[[KEY, VALUE], ...]}`` one call through ``mesh_channel``;
``{"service": S, "identity": NAME}`` asks for an identity (the error, if any);
``{"plain": ADDRESS}`` one call over a plaintext channel of its own; ``{"start": SERVICE}``
calls in a loop from a thread, every call on the loop's channel, and every ``fresh`` seconds
a call on a new channel with its own connection (a new handshake, with the files as they are
then); ``{"stop": true}`` ends the loop and answers the counts and the failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from mesh_agent.client import aio_mesh_server, mesh_channel, mesh_server, peer_identity
from mesh_core.errors import MeshError
from mesh_core.logs import configure
from tests.conftest import free_port
from tests.e2e.commands import Command, serve_commands

METHOD = "/test.v1.Peer/Who"
FRESH_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def _answer(service: str, context: Any) -> bytes:
    return json.dumps({"server": service, "peer": peer_identity(context) or ""}).encode()


def _handlers(service: str, aio: bool) -> grpc.GenericRpcHandler:
    if aio:

        async def who_aio(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return _answer(service, context)

        behaviour: Any = who_aio
    else:

        def who(request: bytes, context: grpc.ServicerContext) -> bytes:
            return _answer(service, context)

        behaviour = who
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return grpc.method_handlers_generic_handler("test.v1.Peer", {"Who": handler, "Admin": handler})


def serve(args: argparse.Namespace) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.flavour == "sync":
        server = mesh_server(args.service, agent=args.agent, node_id=args.node_id)
        server.add_generic_rpc_handlers([_handlers(args.service, aio=False)])
        port = server.add_port(f"127.0.0.1:{free_port()}")
        server.start()
        Path(args.ready_file).write_text(f"127.0.0.1:{port}")
        stop.wait()
        server.stop(1).wait(5)
        return

    async def main() -> None:
        server = aio_mesh_server(args.service, agent=args.agent, node_id=args.node_id)
        server.add_generic_rpc_handlers([_handlers(args.service, aio=True)])
        port = server.add_port("127.0.0.1:0")
        await server.start()
        Path(args.ready_file).write_text(f"127.0.0.1:{port}")
        await asyncio.to_thread(stop.wait)
        await server.stop(1)

    asyncio.run(main())


def _call(
    channel: grpc.Channel, method: str = METHOD, metadata: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    try:
        answer = channel.unary_unary(method)(b"", timeout=5, metadata=metadata)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return {"code": error.code().name, "details": error.details()}
    return {"code": "OK", **json.loads(answer)}


class Loop:
    def __init__(self, agent: str, service: str, fresh: float) -> None:
        self.agent, self.service, self.fresh = agent, service, fresh
        self.stop = threading.Event()
        self.ok = 0
        self.fresh_ok = 0
        self.failures: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        channel = mesh_channel(self.service, agent=self.agent)
        next_fresh = time.monotonic() + self.fresh
        while not self.stop.is_set():
            result = _call(channel)
            if result["code"] == "OK":
                self.ok += 1
            else:
                self.failures.append(result)
            if time.monotonic() >= next_fresh:
                next_fresh = time.monotonic() + self.fresh
                fresh = mesh_channel(self.service, agent=self.agent, options=FRESH_OPTIONS)
                result = _call(fresh)
                fresh.close()
                if result["code"] == "OK":
                    self.fresh_ok += 1
                else:
                    self.failures.append({**result, "fresh": True})
            time.sleep(0.01)
        channel.close()


def call(args: argparse.Namespace) -> None:
    channels: dict[str, grpc.Channel] = {}
    loops: list[Loop] = []

    def handle(command: Command) -> Command:
        if "identity" in command:
            try:
                mesh_channel(command["service"], agent=args.agent, identity=command["identity"])
            except MeshError as error:
                return {"error": type(error).__name__, "details": str(error)}
            return {"error": ""}
        if "call" in command:
            service = command["call"]
            if service not in channels:
                channels[service] = mesh_channel(service, agent=args.agent)
            method = f"/test.v1.Peer/{command.get('method', 'Who')}"
            metadata = [tuple(pair) for pair in command.get("metadata", [])]
            return _call(channels[service], method, metadata or None)  # type: ignore[arg-type]
        if "plain" in command:
            with grpc.insecure_channel(command["plain"]) as channel:
                return _call(channel)
        if "start" in command:
            loops.append(Loop(args.agent, command["start"], command.get("fresh", 1.0)))
            return {}
        if "stop" in command:
            loop = loops.pop()
            loop.stop.set()
            loop.thread.join(10)
            return {"ok": loop.ok, "fresh_ok": loop.fresh_ok, "failures": loop.failures[:20]}
        raise ValueError(f"unknown command {command}")

    if args.identity:
        mesh_channel("web", agent=args.agent, node_id=args.node_id, identity=args.identity)
    serve_commands(Path(args.commands), handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("serve")
    server.add_argument("--service", required=True)
    server.add_argument("--flavour", choices=("sync", "aio"), default="sync")
    server.add_argument("--ready-file", required=True)
    caller = sub.add_parser("call")
    caller.add_argument("--commands", required=True)
    caller.add_argument("--identity")
    for each in (server, caller):
        each.add_argument("--agent", required=True)
        each.add_argument("--node-id", required=True)
    args = parser.parse_args()
    configure()
    if args.command == "serve":
        serve(args)
    else:
        call(args)


if __name__ == "__main__":
    main()
