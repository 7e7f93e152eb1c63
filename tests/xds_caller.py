"""Calls ``xds:///NAME`` once for each name given, with grpcio's own xDS client, and prints one
JSON line per call: ``{"target", "ok", "backend" | "code", "details", "ms"}``.

    python -m tests.xds_caller --server HOST:PORT --node-id ID [--zone Z] [--timeout S]
        [--hold] NAME...

The bootstrap names ``--server`` (a control server or an agent), the node id and its zone; each call
waits for the channel to be ready (``wait_for_ready``), so a name whose resources grpcio
rejected fails with the reason it gives; with ``--fail-fast`` a call fails as soon as the
channel does. With ``--hold`` the channels stay open after the
calls (their ADS streams too) until the process is terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="xds_caller")
    parser.add_argument("--server", required=True, help="xDS server HOST:PORT or unix:PATH")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--zone", default="", help="the node's zone (its locality)")
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--hold", action="store_true", help="keep the channels open until killed")
    parser.add_argument(
        "--fail-fast", action="store_true", help="calls do not wait for the channel to be ready"
    )
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(
        {
            "xds_servers": [
                {
                    "server_uri": args.server,
                    "channel_creds": [{"type": "insecure"}],
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {
                "id": args.node_id,
                **({"locality": {"zone": args.zone}} if args.zone else {}),
            },
        }
    )
    import grpc

    from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

    channels = []
    for name in args.names:
        target = f"xds:///{name}"
        started = time.monotonic()
        record: dict[str, object] = {"target": target}
        channel = grpc.insecure_channel(target)
        channels.append(channel)
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        try:
            reply = stub.Echo(
                echo_pb2.EchoRequest(message=name),
                timeout=args.timeout,
                wait_for_ready=not args.fail_fast,
            )
            record.update(ok=True, backend=reply.backend)
        except grpc.RpcError as error:
            record.update(ok=False, code=error.code().name, details=error.details())
        record["ms"] = round((time.monotonic() - started) * 1000, 1)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    if args.hold:
        threading.Event().wait()
    for channel in channels:
        channel.close()


if __name__ == "__main__":
    main()
