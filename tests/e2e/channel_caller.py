"""A caller process for tests/e2e/test_mesh_channels.py: makes calls through
``mesh_channel()`` and ``aio_mesh_channel()`` (one channel per service, all under the agent
given), one call per command (:mod:`tests.e2e.commands`), in the way the command asks for.

A command is ``{"flavour": "sync" | "aio", "service", "kind", "style", "payload"}``: ``kind``
is the arity (``unary_unary`` and ``stream_stream`` call the demo backend's ``Echo`` and
``EchoStream`` through the generated stub; ``unary_stream`` and ``stream_unary`` the methods
of :mod:`tests.e2e.arity_backend`), ``style`` the way to call (sync: ``call``, ``with_call``,
``future``, ``iterate``; asyncio: ``await``, ``status``, ``iterate``, ``read``, ``write``), and
``payload`` the message (``fail`` makes the arity backend fail the call). The answer is
``{"code", "details", "circuit_open", "wrong_types"}``: ``circuit_open`` when the trailing
metadata says so (a fast-fail), ``wrong_types`` the grpc types the channel, the multicallable,
the call or the error should have had and had not (empty when all held).

    python -m tests.e2e.channel_caller --agent unix:... --commands DIR --node-id caller
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import aio_mesh_channel, mesh_channel
from mesh_core.logs import configure
from tests.e2e.commands import Command, serve_commands

ARITY = "/test.v1.Arity/"
SYNC_TYPES = {
    "unary_unary": grpc.UnaryUnaryMultiCallable,
    "unary_stream": grpc.UnaryStreamMultiCallable,
    "stream_unary": grpc.StreamUnaryMultiCallable,
    "stream_stream": grpc.StreamStreamMultiCallable,
}
AIO_TYPES = {
    "unary_unary": (grpc.aio.UnaryUnaryMultiCallable, grpc.aio.UnaryUnaryCall),
    "unary_stream": (grpc.aio.UnaryStreamMultiCallable, grpc.aio.UnaryStreamCall),
    "stream_unary": (grpc.aio.StreamUnaryMultiCallable, grpc.aio.StreamUnaryCall),
    "stream_stream": (grpc.aio.StreamStreamMultiCallable, grpc.aio.StreamStreamCall),
}


class Types:
    """The grpc types a caller may check for, and those that did not hold."""

    def __init__(self) -> None:
        self.wrong: list[str] = []

    def check(self, value: Any, *kinds: type, what: str) -> None:
        self.wrong += [
            f"{what} is no {k.__module__}.{k.__qualname__}"
            for k in kinds
            if not isinstance(value, k)
        ]


def _multicallable(channel: Any, kind: str) -> Any:
    if kind == "unary_unary":
        return echo_pb2_grpc.EchoServiceStub(channel).Echo
    if kind == "stream_stream":
        return echo_pb2_grpc.EchoServiceStub(channel).EchoStream
    method = ARITY + kind.title().replace("_", "")
    return getattr(channel, kind)(method)  # raw bytes


def _request(kind: str, payload: str) -> Any:
    if kind == "unary_unary":
        return echo_pb2.EchoRequest(message=payload)
    if kind == "stream_stream":
        return iter([echo_pb2.EchoStreamRequest(message=payload)])
    if kind == "unary_stream":
        return payload.encode()
    return iter([payload.encode(), b"-x"])


def _answer(error: Any, types: Types) -> Command:
    trailing = dict(error.trailing_metadata() or ())
    return {
        "code": error.code().name,
        "details": error.details() or "",
        "circuit_open": trailing.get("mesh-circuit") == "open",
        "wrong_types": types.wrong,
    }


def _ok(types: Types) -> Command:
    return {"code": "OK", "details": "", "circuit_open": False, "wrong_types": types.wrong}


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.new_event_loop()
        self.channels: dict[tuple[str, str], Any] = {}

    def channel(self, flavour: str, service: str) -> Any:
        key = (flavour, service)
        if key not in self.channels:
            make = mesh_channel if flavour == "sync" else aio_mesh_channel
            self.channels[key] = make(service, agent=self.args.agent, node_id=self.args.node_id)
        return self.channels[key]

    def handle(self, command: Command) -> Command:
        if command["flavour"] == "sync":
            return self.sync(command)
        return self.loop.run_until_complete(self.aio(command))

    def sync(self, command: Command) -> Command:
        kind, style, types = command["kind"], command["style"], Types()
        channel = self.channel("sync", command["service"])
        types.check(channel, grpc.Channel, what="the channel")
        multicallable = _multicallable(channel, kind)
        types.check(multicallable, SYNC_TYPES[kind], what="the multicallable")
        request = _request(kind, command["payload"])
        try:
            if style == "call":
                multicallable(request, timeout=5)
            elif style == "with_call":
                _, call = multicallable.with_call(request, timeout=5)
                types.check(call, grpc.Call, what="with_call's call")
            elif style == "future":
                future = multicallable.future(request, timeout=5)
                types.check(future, grpc.Future, grpc.Call, what="the future")
                future.result()
            else:
                responses = multicallable(request, timeout=5)
                types.check(responses, grpc.Call, grpc.Future, what="the streaming call")
                list(responses)
        except grpc.RpcError as error:
            types.check(error, grpc.RpcError, grpc.Call, what="the error")
            return _answer(error, types)
        return _ok(types)

    async def aio(self, command: Command) -> Command:
        kind, style, types = command["kind"], command["style"], Types()
        channel = self.channel("aio", command["service"])
        types.check(channel, grpc.aio.Channel, what="the channel")
        multicallable = _multicallable(channel, kind)
        multicallable_type, call_type = AIO_TYPES[kind]
        types.check(multicallable, multicallable_type, what="the multicallable")
        if style == "write":
            call = multicallable(timeout=5)
        else:
            call = multicallable(_request(kind, command["payload"]), timeout=5)
        types.check(call, grpc.aio.Call, call_type, what="the call")
        try:
            if style == "await":
                await call
            elif style == "status":  # the response never awaited: its status alone
                if await call.code() is not grpc.StatusCode.OK:
                    return {
                        "code": (await call.code()).name,
                        "details": await call.details(),
                        "circuit_open": dict(await call.trailing_metadata()).get("mesh-circuit")
                        == "open",
                        "wrong_types": types.wrong,
                    }
            elif style == "iterate":
                _ = [response async for response in call]
            elif style == "read":
                while await call.read() is not grpc.aio.EOF:
                    pass
            else:
                await self.write(call, kind, command["payload"])
        except grpc.aio.AioRpcError as error:
            types.check(error, grpc.aio.AioRpcError, what="the error")
            return _answer(error, types)
        return _ok(types)

    async def write(self, call: Any, kind: str, payload: str) -> None:
        """The reader/writer style of a streaming request (the call made without requests)."""
        try:
            if kind == "stream_unary":
                await call.write(payload.encode())
                await call.write(b"-x")
            else:
                await call.write(echo_pb2.EchoStreamRequest(message=payload))
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # over before the first write (a fast-fail): its status says why
        if kind == "stream_unary":
            await call
        else:
            while await call.read() is not grpc.aio.EOF:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.channel_caller")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--commands", required=True)
    parser.add_argument("--node-id", default="channel-caller")
    args = parser.parse_args()
    configure()  # logs to stderr
    serve_commands(Path(args.commands), Caller(args).handle)


if __name__ == "__main__":
    main()
