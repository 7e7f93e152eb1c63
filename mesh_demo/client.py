"""A demo client: calls ``xds:///SERVICE`` through grpcio's own xDS client in a loop and
prints each call's outcome, one line per call (``--json`` for machines)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mesh_agent._bootstrap import bootstrap_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mesh-demo client", description=__doc__)
    parser.add_argument("--service", required=True)
    parser.add_argument("--xds-server", required=True, help="HOST:PORT or unix:PATH")
    parser.add_argument("--node-id", default=f"demo-client-{os.getpid()}")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between calls")
    parser.add_argument("--count", type=int, default=0, help="stop after N calls (0: forever)")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline per call")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # Must be set before the first xds: channel; grpcio reads it once per process.
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json([args.xds_server], args.node_id)

    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

    channel = grpc.insecure_channel(f"xds:///{args.service}")
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    sent = 0
    try:
        while args.count == 0 or sent < args.count:
            sent += 1
            started = time.perf_counter()
            record: dict[str, object] = {"seq": sent, "t": round(time.time(), 3)}
            try:
                reply = stub.Echo(echo_pb2.EchoRequest(message=str(sent)), timeout=args.timeout)
                record.update(ok=True, backend=reply.backend)
            except grpc.RpcError as error:
                record.update(ok=False, code=error.code().name, details=error.details())
            record["ms"] = round((time.perf_counter() - started) * 1000, 2)
            if args.json:
                line = json.dumps(record)
            elif record["ok"]:
                line = f"call {sent:>4}  ok    {record['backend']:<10} {record['ms']:>8} ms"
            else:
                line = f"call {sent:>4}  FAIL  {record['code']}: {record['details']}"
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        channel.close()


if __name__ == "__main__":
    main()
