"""The floor of the ``agent`` section's health-check figures: a bare grpc.aio health client
making the checks an agent makes, and nothing else. One channel per address; one loop per
(address, health service name) that checks, then sleeps the interval ±10%, rounded up to
``--tick`` (0: not rounded), as the agent's checker does.

    python -m bench._health_client --target HOST:PORT ... --names N --prefix P \\
        --interval 5 --tick 0.25 --ready-file PATH

checks the names ``P-000`` .. ``P-(N-1)`` on every target; writes the ready file once its
channels are open; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
from pathlib import Path

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def _sleep_until(when: float, tick: float) -> None:
    loop = asyncio.get_running_loop()
    if tick > 0:
        when = math.ceil(when / tick) * tick
    woken: asyncio.Future[None] = loop.create_future()
    loop.call_at(when, lambda: woken.done() or woken.set_result(None))
    await woken


async def _loop(stub: health_pb2_grpc.HealthStub, name: str, interval: float, tick: float) -> None:
    loop = asyncio.get_running_loop()
    request = health_pb2.HealthCheckRequest(service=name)
    await _sleep_until(loop.time() + random.uniform(0, min(interval, 1.0)), tick)
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Check(request, timeout=1.0)
        await _sleep_until(loop.time() + interval * random.uniform(0.9, 1.1), tick)


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    channels = [grpc.aio.insecure_channel(t) for t in args.target]
    names = [f"{args.prefix}-{i:03d}" for i in range(args.names)]
    tasks = [
        asyncio.create_task(_loop(health_pb2_grpc.HealthStub(c), n, args.interval, args.tick))
        for c in channels
        for n in names
    ]
    args.ready_file.write_text("ready\n")
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._health_client")
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--names", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--tick", type=float, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
