"""A demo client: calls ``xds:///SERVICE`` in a loop and prints each call's outcome, one
line per call (``--json`` for machines).

By default it uses grpcio's own xDS client directly (``--xds-server`` names the xDS server);
with ``--mesh`` it uses :func:`mesh_agent.client.mesh_channel` (``--aio``: the asyncio one),
so calls also pass the node's circuit breakers. ``--stream`` calls the streaming method.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _record(seq: int, started: float, ok: bool, **fields: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "t": round(time.time(), 4),  # when the call ended
        "ok": ok,
        "ms": round((time.perf_counter() - started) * 1000, 2),
        **fields,
    }


def _emit(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        line = json.dumps(record)
    elif record["ok"]:
        line = f"call {record['seq']:>4}  ok    {record['backend']:<10} {record['ms']:>8} ms"
    else:
        line = f"call {record['seq']:>4}  FAIL  {record['code']}: {record['details']}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _failure(error: Any) -> dict[str, Any]:
    trailing = dict(error.trailing_metadata() or ())
    return {
        "code": error.code().name,
        "details": error.details(),
        "circuit_open": trailing.get("mesh-circuit") == "open",
    }


def _wait_for_file(path: Path | None) -> None:
    while path is not None and not path.exists():
        time.sleep(0.001)


def run_sync(args: argparse.Namespace) -> None:
    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

    if args.mesh:
        from mesh_agent.client import mesh_channel

        channel = mesh_channel(args.service, agent=args.xds_server, node_id=args.node_id)
    else:
        channel = grpc.insecure_channel(f"xds:///{args.service}")
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    _wait_for_file(args.after_file)
    seq = 0
    while args.count == 0 or seq < args.count:
        seq += 1
        started = time.perf_counter()
        try:
            if args.stream:
                requests = iter([echo_pb2.EchoStreamRequest(message=str(seq))])
                replies = list(stub.EchoStream(requests, timeout=args.timeout))
                record = _record(seq, started, True, backend=replies[-1].backend)
            else:
                reply = stub.Echo(echo_pb2.EchoRequest(message=str(seq)), timeout=args.timeout)
                record = _record(seq, started, True, backend=reply.backend)
        except grpc.RpcError as error:
            record = _record(seq, started, False, **_failure(error))
        _emit(record, args.json)
        if args.touch_after and seq == args.touch_after[0]:
            Path(args.touch_after[1]).touch()
        time.sleep(args.interval)
    channel.close()


async def run_aio(args: argparse.Namespace) -> None:
    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
    from mesh_agent.client import aio_mesh_channel

    channel = aio_mesh_channel(args.service, agent=args.xds_server, node_id=args.node_id)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    while args.after_file is not None and not args.after_file.exists():
        await asyncio.sleep(0.001)

    async def one(seq: int) -> None:
        started = time.perf_counter()
        try:
            if args.stream:
                call = stub.EchoStream(
                    iter([echo_pb2.EchoStreamRequest(message=str(seq))]), timeout=args.timeout
                )
                replies = [reply async for reply in call]
                record = _record(seq, started, True, backend=replies[-1].backend)
            else:
                reply = await stub.Echo(
                    echo_pb2.EchoRequest(message=str(seq)), timeout=args.timeout
                )
                record = _record(seq, started, True, backend=reply.backend)
        except grpc.aio.AioRpcError as error:
            record = _record(seq, started, False, **_failure(error))
        _emit(record, args.json)

    seq = 0
    while args.count == 0 or seq < args.count:
        batch = [one(seq + i + 1) for i in range(args.concurrency)]
        seq += args.concurrency
        await asyncio.gather(*batch)
        if args.touch_after and seq >= args.touch_after[0]:
            Path(args.touch_after[1]).touch()
        await asyncio.sleep(args.interval)
    await channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mesh-demo client", description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--xds-server", required=True, help="HOST:PORT or unix:PATH")
    parser.add_argument("--node-id", default=f"demo-client-{os.getpid()}")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between calls")
    parser.add_argument("--count", type=int, default=0, help="stop after N calls (0: forever)")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline per call")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mesh", action="store_true", help="use mesh_channel()")
    parser.add_argument("--aio", action="store_true", help="use aio_mesh_channel()")
    parser.add_argument("--stream", action="store_true", help="call the streaming method")
    parser.add_argument("--concurrency", type=int, default=1, help="calls at once (--aio)")
    parser.add_argument("--after-file", type=Path, help="start calling once this file exists")
    parser.add_argument(
        "--touch-after", nargs=2, metavar=("N", "PATH"), help="create PATH after the N-th call"
    )
    args = parser.parse_args(argv)
    if args.touch_after:
        args.touch_after = (int(args.touch_after[0]), args.touch_after[1])
    if not args.mesh and not args.aio:
        from mesh_agent._bootstrap import bootstrap_json

        # Must be set before the first xds: channel; grpcio reads it once per process.
        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json([args.xds_server], args.node_id)
    try:
        if args.aio:
            asyncio.run(run_aio(args))
        else:
            run_sync(args)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
