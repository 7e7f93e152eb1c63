"""A caller process for the consistent-hashing tests (tests/e2e/test_ring_hash.py), on the
client library's ``mesh_channel()`` through an agent.

It serves commands (:mod:`tests.e2e.commands`) of two kinds:

``{"keys": [...], "header": NAME, "each": K, "timeout": S}``: K ``Echo`` calls per key, on one
channel kept for the whole process, each sending the key as metadata ``NAME``; the calls of
one round (one per key) go together. Answers ``{"answers": {key: [backend or "!CODE", ...]}}``
in the order made.

``{"channels": N, "each": K, "timeout": S}``: opens N new channels, makes K ``Echo`` calls on
each (the channels' calls go together), then closes them. Answers ``{"answers": [[backend or
"!CODE", ...], ...]}``, one list per channel.

``{"exit": true}`` ends the process. Calls do not wait for ready: a call the load balancer
fails, fails at once, so a test sees the moment a backend is gone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import mesh_channel
from mesh_core.logs import configure
from tests.e2e.commands import serve_commands


def answer(future: Any) -> str:
    """The backend that answered the call, or ``!CODE`` when it failed."""
    try:
        reply = future.result()
    except grpc.RpcError as error:
        return f"!{error.code().name}"
    return str(reply.backend)


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stub = self._stub(self._channel())

    def _channel(self) -> grpc.Channel:
        return mesh_channel(self.args.service, agent=self.args.agent, node_id=self.args.node_id)

    @staticmethod
    def _stub(channel: grpc.Channel) -> echo_pb2_grpc.EchoServiceStub:
        return echo_pb2_grpc.EchoServiceStub(channel)

    @staticmethod
    def _round(
        calls: Sequence[tuple[echo_pb2_grpc.EchoServiceStub, Any]], timeout: float
    ) -> list[str]:
        """One call on each (stub, metadata), made together; what each got."""
        request = echo_pb2.EchoRequest(message="x")
        futures = [stub.Echo.future(request, timeout=timeout, metadata=md) for stub, md in calls]
        return [answer(future) for future in futures]

    def keys(self, command: dict[str, Any]) -> dict[str, list[str]]:
        keys: list[str] = command["keys"]
        header, timeout = command["header"], float(command.get("timeout", 5.0))
        answers: dict[str, list[str]] = {key: [] for key in keys}
        for _ in range(int(command["each"])):
            calls = [(self.stub, [(header, key)]) for key in keys]
            for key, got in zip(keys, self._round(calls, timeout), strict=True):
                answers[key].append(got)
        return answers

    def channels(self, command: dict[str, Any]) -> list[list[str]]:
        channels = [self._channel() for _ in range(int(command["channels"]))]
        timeout = float(command.get("timeout", 5.0))
        try:
            stubs = [self._stub(channel) for channel in channels]
            answers: list[list[str]] = [[] for _ in stubs]
            for _ in range(int(command["each"])):
                for answered, got in zip(
                    answers, self._round([(stub, ()) for stub in stubs], timeout), strict=True
                ):
                    answered.append(got)
            return answers
        finally:
            for channel in channels:
                channel.close()

    def answer(self, command: dict[str, Any]) -> dict[str, Any]:
        result = self.keys(command) if "keys" in command else self.channels(command)
        return {"answers": result}


def main() -> None:
    parser = argparse.ArgumentParser(prog="hash_caller")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--commands", type=Path, required=True)
    args = parser.parse_args()
    configure()  # logs to stderr
    serve_commands(args.commands, Caller(args).answer)


if __name__ == "__main__":
    main()
