"""A demo backend: ``mesh.demo.v1.EchoService`` answering with its own name, with
grpc.health.v1 and reflection. ``--fail CODE`` makes every call fail with that status;
``Configure`` changes it while the backend runs, for a share of the calls if asked."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import AioMeshServerInterceptor
from mesh_core import telemetry
from mesh_core.logs import configure

log = structlog.get_logger("mesh_demo.backend")
SERVICE = echo_pb2.DESCRIPTOR.services_by_name["EchoService"].full_name


class Echo(echo_pb2_grpc.EchoServiceServicer):
    def __init__(self, name: str, fail: str = "", delay: float = 0.0) -> None:
        self.name = name
        self.fail = fail
        self.delay = delay
        self.calls = 0
        self.fail_share = 1.0
        self._failed_share = 0.0  # failures owed so far: a share's failures spread evenly

    def _fails(self) -> bool:
        if not self.fail:
            return False
        if self.fail_share >= 1.0:
            return True
        self._failed_share += self.fail_share
        if self._failed_share >= 1.0:
            self._failed_share -= 1.0
            return True
        return False

    async def Echo(
        self, request: echo_pb2.EchoRequest, context: grpc.aio.ServicerContext
    ) -> echo_pb2.EchoResponse:
        self.calls += 1
        log.info("echo", name=self.name, fail=self.fail or None)
        fails = self._fails()
        if self.delay:
            await asyncio.sleep(self.delay)
        if fails:
            await context.abort(grpc.StatusCode[self.fail], f"{self.name} told to fail")
        return echo_pb2.EchoResponse(message=request.message, backend=self.name)

    async def Configure(
        self, request: echo_pb2.ConfigureRequest, context: grpc.aio.ServicerContext
    ) -> echo_pb2.ConfigureResponse:
        if not request.read_only:
            if request.fail and request.fail not in grpc.StatusCode.__members__:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown status {request.fail!r}"
                )
            if not 0.0 <= request.fail_share <= 1.0:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"fail_share must be between 0 and 1, got {request.fail_share}",
                )
            self.fail, self.delay = request.fail, request.delay
            self.fail_share = request.fail_share or 1.0
            log.info(
                "backend configured",
                name=self.name,
                fail=self.fail,
                fail_share=self.fail_share,
                delay=self.delay,
            )
        return echo_pb2.ConfigureResponse(calls=self.calls)

    async def EchoStream(
        self,
        request_iterator: AsyncIterator[echo_pb2.EchoStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[echo_pb2.EchoStreamResponse]:
        self.calls += 1
        if self.fail:
            await context.abort(grpc.StatusCode[self.fail], f"{self.name} told to fail")
        async for request in request_iterator:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield echo_pb2.EchoStreamResponse(message=request.message, backend=self.name)


async def serve(args: argparse.Namespace) -> None:
    server = grpc.aio.server(interceptors=[AioMeshServerInterceptor()])
    echo_pb2_grpc.add_EchoServiceServicer_to_server(Echo(args.name, args.fail, args.delay), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (
            SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(args.listen)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    host = args.listen.rpartition(":")[0]
    address = f"{host}:{port}"
    log.info("backend serving", name=args.name, address=address)
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(address + "\n")
        os.replace(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def set_health(status: int) -> None:
        # SIGUSR1 / SIGUSR2: report NOT_SERVING / SERVING, to watch health checks react.
        log.info("backend health set", name=args.name, serving=status == SERVING)
        for service in ("", SERVICE):
            pending.add(loop.create_task(checker.set(service, status)))

    SERVING = health_pb2.HealthCheckResponse.SERVING
    pending: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGUSR1, set_health, health_pb2.HealthCheckResponse.NOT_SERVING)
    loop.add_signal_handler(signal.SIGUSR2, set_health, SERVING)
    await stop.wait()
    await checker.enter_graceful_shutdown()
    await server.stop(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mesh_demo.backend", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--fail", default="", help="a gRPC status name every call fails with")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    configure()
    otel = telemetry.start("mesh-demo backend", f"demo-backend-{args.name}", None, None)
    try:
        asyncio.run(serve(args))
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
