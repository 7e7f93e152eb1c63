"""Bench client: calls ``xds:///SERVICE`` through grpcio's own xDS client in a tight loop
and prints one JSON line only when the outcome changes (a new backend answers, or calls
start or stop failing): ``{"t": time.time() after the reply, "backend": ..., "ok": ...}``.
Printing only changes keeps the parent's reading off the CPU the servers need."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mesh_agent.client._bootstrap import bootstrap_json


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._xds_client", description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--xds-server", required=True)
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between calls")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json(
        [args.xds_server], f"bench-client-{os.getpid()}"
    )

    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

    channel = grpc.insecure_channel(f"xds:///{args.service}")
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    request = echo_pb2.EchoRequest(message="bench")
    last: tuple[bool, str] | None = None
    calls = 0
    try:
        while True:
            calls += 1
            try:
                reply = stub.Echo(request, timeout=args.timeout)
                outcome = (True, reply.backend)
            except grpc.RpcError as error:
                outcome = (False, error.code().name)
            now = time.time()
            if outcome != last:
                record = {"t": now, "ok": outcome[0], "calls": calls}
                record["backend" if outcome[0] else "code"] = outcome[1]
                sys.stdout.write(json.dumps(record) + "\n")
                sys.stdout.flush()
                last = outcome
            if args.interval:
                time.sleep(args.interval)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        channel.close()


if __name__ == "__main__":
    main()
