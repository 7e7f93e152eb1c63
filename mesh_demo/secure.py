"""The demo's mTLS scene, a process per side (grpcio reads one xDS bootstrap per process):

    python -m mesh_demo.secure serve --service vault --listen 127.0.0.1:PORT --agent unix:...
    python -m mesh_demo.secure call --service vault --identity teller --calls 20 --agent ...
    python -m mesh_demo.secure plain --address 127.0.0.1:PORT

``serve`` runs the service's server from ``mesh_server`` (grpcio's xDS-enabled server; its
Listener and certificate come from the node's agent) answering ``EchoService/Echo`` with the
caller's SPIFFE id as the message. ``call`` makes calls through ``mesh_channel`` holding an
identity and prints one JSON line: how many succeeded and who the server saw. ``plain`` makes
one call over a plaintext channel of its own and prints its status.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

import grpc

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import mesh_channel, mesh_server, peer_identity
from mesh_core.logs import configure


class Vault(echo_pb2_grpc.EchoServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name

    def Echo(
        self, request: echo_pb2.EchoRequest, context: grpc.ServicerContext
    ) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(
            message=peer_identity(context) or "(plaintext)", backend=self.name
        )


def serve(args: argparse.Namespace) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = mesh_server(args.service, agent=args.agent, node_id=f"{args.service}-server")
    echo_pb2_grpc.add_EchoServiceServicer_to_server(Vault(args.service), server)
    server.add_port(args.listen)
    server.start()
    Path(args.ready_file).write_text(args.listen)
    stop.wait()
    server.stop(1).wait(5)


def call(args: argparse.Namespace) -> None:
    channel = mesh_channel(args.service, agent=args.agent, identity=args.identity)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    ok, seen, errors = 0, set(), set()
    for _ in range(args.calls):
        try:
            reply = stub.Echo(echo_pb2.EchoRequest(message="hello"), timeout=5, wait_for_ready=True)
        except grpc.RpcError as error:
            errors.add(error.code().name if isinstance(error, grpc.Call) else str(error))
            continue
        ok += 1
        seen.add(reply.message)
    print(
        json.dumps({"ok": ok, "calls": args.calls, "seen": sorted(seen), "errors": sorted(errors)})
    )


def plain(args: argparse.Namespace) -> None:
    with grpc.insecure_channel(args.address) as channel:
        try:
            echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest(), timeout=5)
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else str(error)
        else:
            code = "OK"
    print(json.dumps({"code": code}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="mesh_demo.secure", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serving = sub.add_parser("serve")
    serving.add_argument("--service", required=True)
    serving.add_argument("--listen", required=True, help="IP:PORT (not port 0)")
    serving.add_argument("--ready-file", required=True)
    calling = sub.add_parser("call")
    calling.add_argument("--service", required=True)
    calling.add_argument("--identity", required=True)
    calling.add_argument("--calls", type=int, default=20)
    for each in (serving, calling):
        each.add_argument("--agent", required=True)
    plaintext = sub.add_parser("plain")
    plaintext.add_argument("--address", required=True)
    args = parser.parse_args()
    configure()
    {"serve": serve, "call": call, "plain": plain}[args.command](args)


if __name__ == "__main__":
    main()
