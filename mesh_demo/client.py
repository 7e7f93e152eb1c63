"""A demo client: calls ``xds:///SERVICE`` in a loop and prints each call's outcome, one
timestamped line per call (``--json`` for machines). Calls the node's open breaker failed
fast are marked ``circuit open (fail fast)``.

By default it uses grpcio's own xDS client directly (``--xds-server`` names the xDS server);
with ``--mesh`` it uses :func:`mesh_agent.client.mesh_channel` (``--aio``: the asyncio one),
so calls also pass the node's circuit breakers. ``--stream`` calls the streaming method.
``--tls-cert/--tls-key/--tls-ca`` (default ``$MESH_TLS_*``): mTLS to a TCP ``--xds-server``.
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

from mesh_core import telemetry, tls
from mesh_core.logs import configure

DETAILS_MAX = 100
"""Failure details longer than this are cut short in the human-readable lines."""


def _record(seq: int, started: float, ok: bool, **fields: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "t": round(time.time(), 4),  # when the call ended
        "ok": ok,
        "ms": round((time.perf_counter() - started) * 1000, 2),
        **fields,
    }


def clock(t: float) -> str:
    """Wall-clock time ``t`` as local ``HH:MM:SS.mmm``."""
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _short(details: str | None) -> str:
    lines = (details or "").splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= DETAILS_MAX else line[: DETAILS_MAX - 3] + "..."


def format_record(record: dict[str, Any]) -> str:
    """One call's outcome as a human-readable line."""
    head = f"{clock(record['t'])}  call {record['seq']:>4}"
    if record["ok"]:
        return f"{head}  ok    {record['backend']:<10} {record['ms']:>8.2f} ms"
    if record.get("circuit_open"):
        until = record.get("open_until")
        outcome = "circuit open (fail fast)"
        if until is not None:
            outcome += f", open until {clock(until)}"
        return f"{head}  FAIL  {record['code']}: {outcome}"
    return f"{head}  FAIL  {record['code']}: {_short(record['details'])} ({record['ms']:.2f} ms)"


def _emit(record: dict[str, Any], as_json: bool) -> None:
    line = json.dumps(record) if as_json else format_record(record)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _failure(error: Any) -> dict[str, Any]:
    trailing = dict(error.trailing_metadata() or ())
    circuit_open = trailing.get("mesh-circuit") == "open"
    fields: dict[str, Any] = {
        "code": error.code().name,
        "details": error.details(),
        "circuit_open": circuit_open,
    }
    until_ms = trailing.get("mesh-open-until-ms")
    if circuit_open and until_ms is not None and str(until_ms).isdigit():
        fields["open_until"] = int(until_ms) / 1000
    return fields


def _wait_for_file(path: Path | None) -> None:
    while path is not None and not path.exists():
        time.sleep(0.001)


def run_sync(args: argparse.Namespace) -> None:
    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

    if args.mesh:
        from mesh_agent.client import mesh_channel

        channel = mesh_channel(
            args.service, agent=args.xds_server, node_id=args.node_id, tls=args.tls
        )
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

    channel = aio_mesh_channel(
        args.service, agent=args.xds_server, node_id=args.node_id, tls=args.tls
    )
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
    parser = argparse.ArgumentParser(prog="python -m mesh_demo.client", description=__doc__)
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
    tls.add_arguments(parser, role="client (default: $MESH_TLS_*)")
    args = parser.parse_args(argv)
    try:
        args.tls = tls.from_args(args) or tls.env_files()
    except tls.TlsError as error:
        parser.error(str(error))
    if args.touch_after:
        args.touch_after = (int(args.touch_after[0]), args.touch_after[1])
    if not args.mesh and not args.aio:
        from mesh_agent.client._bootstrap import bootstrap_json

        # Must be set before the first xds: channel; grpcio reads it once per process.
        os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json(
            [args.xds_server], args.node_id, tls=args.tls
        )
    configure()  # logs go to stderr: stdout carries only the call lines
    otel = telemetry.start("mesh-demo client", "demo-client", None, None)
    try:
        if args.aio:
            asyncio.run(run_aio(args))
        else:
            run_sync(args)
    except KeyboardInterrupt:
        pass
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
