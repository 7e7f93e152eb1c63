"""The footprint floors of the ``agent`` section: a Python process that imports grpc and does
nothing else; with ``--serve``, one that also runs a grpc.aio server (the standard health
service on 127.0.0.1:0) and calls it once over a channel it keeps open, the least a process
that serves and calls gRPC holds. Writes ``--ready-file`` once it is so; runs until SIGTERM.

    python -m bench._grpc_only [--serve] --ready-file PATH
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc  # the point of the process


async def _serve(ready: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        ready.write_text("ready\n")
        await stop.wait()
    await server.stop(grace=None)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    # No argparse: the import-only floor imports nothing but grpc (and what it imports).
    ready = Path(sys.argv[sys.argv.index("--ready-file") + 1])
    if "--serve" in sys.argv:
        asyncio.run(_serve(ready))
        return
    signal.signal(signal.SIGTERM, _stop)
    ready.write_text("ready\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
