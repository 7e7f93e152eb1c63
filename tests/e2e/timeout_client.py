"""A client process for the policy-timeout tests: sets the backend's delay, makes one call
per step through the channels asked for, and prints one JSON line per call with its outcome
and how long it took from the moment it was made.

    python -m tests.e2e.timeout_client --agent unix:... --service slow --backend HOST:PORT \\
        --channels mesh,raw --plan 0:20,2.5:20,3.6:1

``--plan`` holds ``DELAY:TIMEOUT`` steps (``TIMEOUT`` ``-`` for none); a step ending in ``:H``
sends the ``--header`` given (``NAME=VALUE``) as call metadata. Channels: ``mesh``
(``mesh_channel``), ``aio`` (``aio_mesh_channel``) and ``raw`` (a plain ``xds:///SERVICE``
channel: beside ``mesh``, under the bootstrap ``mesh_channel`` set; alone, with a bootstrap
naming ``--agent``). ``--linger`` keeps the process (and its xDS streams) alive afterwards."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import grpc
import grpc.aio

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import aio_mesh_channel, mesh_channel
from mesh_agent.client._bootstrap import bootstrap_json
from mesh_core.logs import configure


def _emit(channel: str, delay: float, timeout: float | None, started: float, **fields: Any) -> None:
    record = {
        "channel": channel,
        "delay": delay,
        "timeout": timeout,
        "s": round(time.perf_counter() - started, 3),
        **fields,
    }
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _done(linger: float) -> None:
    sys.stdout.write('{"done": true}\n')
    sys.stdout.flush()
    time.sleep(linger)


def _configure(backend: str, delay: float) -> None:
    with grpc.insecure_channel(backend) as channel:
        echo_pb2_grpc.EchoServiceStub(channel).Configure(
            echo_pb2.ConfigureRequest(delay=delay), timeout=5
        )


Step = tuple[float, float | None, bool]


def _steps(plan: str) -> list[Step]:
    steps = []
    for step in plan.split(","):
        delay, timeout, *flags = step.split(":")
        timeout_s = None if timeout in ("", "-") else float(timeout)
        steps.append((float(delay), timeout_s, flags == ["H"]))
    return steps


def _metadata(args: argparse.Namespace, with_header: bool) -> tuple[tuple[str, str], ...]:
    if not with_header:
        return ()
    name, _, value = args.header.partition("=")
    return ((name, value),)


def run_sync(args: argparse.Namespace, names: list[str]) -> None:
    if "mesh" not in names:
        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json([args.agent], args.node_id)
    stubs = {}
    for name in names:
        if name == "mesh":
            channel = mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
        else:  # raw: made after mesh_channel, so under the bootstrap it set
            channel = grpc.insecure_channel(f"xds:///{args.service}")
        stubs[name] = echo_pb2_grpc.EchoServiceStub(channel)
    for delay, timeout, with_header in _steps(args.plan):
        _configure(args.backend, delay)
        metadata = _metadata(args, with_header)
        for name, stub in stubs.items():
            started = time.perf_counter()
            try:
                stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=timeout, metadata=metadata)
            except grpc.RpcError as error:
                _emit(name, delay, timeout, started, ok=False, code=error.code().name)
            else:
                _emit(name, delay, timeout, started, ok=True, code="OK")
    _done(args.linger)  # with the channels still open


async def run_aio(args: argparse.Namespace) -> None:
    channel = aio_mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    for delay, timeout, with_header in _steps(args.plan):
        _configure(args.backend, delay)
        metadata = _metadata(args, with_header)
        started = time.perf_counter()
        try:
            await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            _emit("aio", delay, timeout, started, ok=False, code=error.code().name)
        else:
            _emit("aio", delay, timeout, started, ok=True, code="OK")
    _done(args.linger)
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--channels", default="mesh")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--node-id", default="timeout-client")
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--header", default="", help="NAME=VALUE sent by the steps ending in :H")
    args = parser.parse_args()
    configure()  # logs to stderr
    names = args.channels.split(",")
    if names == ["aio"]:
        asyncio.run(run_aio(args))
    else:
        run_sync(args, names)


if __name__ == "__main__":
    main()
