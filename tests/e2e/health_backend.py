"""A backend that only serves ``grpc.health.v1.Health/Check`` and says each Check it answers:
one JSON line ``{"check": SERVICE_NAME}`` on stdout per call, so a test counts the checks a
health checker makes, per health service name. The server as a whole ("") and every
``--serve NAME`` answer SERVING (any other name NOT_FOUND, as the stock servicer does);
SIGUSR1 turns them all NOT_SERVING, SIGUSR2 SERVING again.

    python -m tests.e2e.health_backend --ready-file PATH [--serve NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class CountingHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, names: list[str]) -> None:
        self.names = {"", *names}
        self.status = SERVING
        self.lock = threading.Lock()

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            sys.stdout.write(json.dumps({"check": request.service}) + "\n")
            sys.stdout.flush()
        if request.service not in self.names:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self.status)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.health_backend")
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--serve", action="append", default=[], metavar="NAME")
    args = parser.parse_args()
    health = CountingHealth(args.serve)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: setattr(health, "status", NOT_SERVING))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(health, "status", SERVING))
    partial = args.ready_file.with_name(args.ready_file.name + ".tmp")
    partial.write_text(f"127.0.0.1:{port}\n")
    os.replace(partial, args.ready_file)
    while not stop.wait(0.5):
        pass
    server.stop(grace=None).wait()


if __name__ == "__main__":
    main()
