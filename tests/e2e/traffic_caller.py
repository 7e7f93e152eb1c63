"""A caller process for the traffic-rule tests (tests/e2e/test_traffic.py), on the client
library's ``mesh_channel()`` (or, with ``--xds-server``, grpcio's plain ``xds:///SERVICE``
channels straight to that xDS server).

Two modes:

``--commands DIR``: one process serves many batches of calls (:mod:`tests.e2e.commands`):
each command holds ``{"service", "count", "concurrency", "method", "metadata", "timeout"}``;
the caller makes the calls and answers one record per call, in the order made,
``{"backend", "code", "details", "ms", "seen"}``. ``ms`` is measured from the moment that call
was made; ``seen`` is what a client interceptor on top of the channel observed of the same
call (its code, details and duration).
Calls go in batches of ``concurrency`` made together (``Echo`` only; ``EchoStream`` calls are
made one at a time). ``{"exit": true}`` ends the process.

``--steady SERVICE``: one ``Echo`` call after another (each with ``--timeout`` and
``wait_for_ready``), one JSON line per call on stdout, until the process is stopped; ``at``
is the ``time.time()`` of the reply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_core.logs import configure
from tests.e2e.commands import serve_commands

Record = dict[str, Any]


class Recorder(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A plain client interceptor, outermost on the channel: records each call's outcome as
    an interceptor sees it, under the ticket set just before the call is made."""

    def __init__(self) -> None:
        self.ticket = 0
        self.seen: dict[int, Record] = {}
        self._lock = threading.Lock()

    def _watch(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        ticket, started = self.ticket, time.perf_counter()
        call = continuation(details, request)

        def done(finished: Any) -> None:
            code = finished.code()
            with self._lock:
                self.seen[ticket] = {
                    "code": code.name if code is not None else "CANCELLED",
                    "details": finished.details() or "",
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                }

        call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._watch(continuation, details, request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._watch(continuation, details, requests)


class Caller:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.recorder = Recorder()
        self._stubs: dict[str, echo_pb2_grpc.EchoServiceStub] = {}
        if args.xds_server:
            from mesh_agent.client._bootstrap import bootstrap_json

            os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = bootstrap_json(
                [args.xds_server], args.node_id, zone=args.zone
            )

    def stub(self, service: str) -> echo_pb2_grpc.EchoServiceStub:
        if service not in self._stubs:
            if self.args.xds_server:
                channel = grpc.insecure_channel(f"xds:///{service}")
            else:
                from mesh_agent.client import mesh_channel

                channel = mesh_channel(service, agent=self.args.agent, node_id=self.args.node_id)
            self._stubs[service] = echo_pb2_grpc.EchoServiceStub(
                grpc.intercept_channel(channel, self.recorder)
            )
        return self._stubs[service]

    def batch(self, command: Record) -> list[Record]:
        stub = self.stub(command["service"])
        metadata = [tuple(pair) for pair in command.get("metadata", [])]
        timeout = float(command.get("timeout", 5.0))
        count, concurrency = int(command["count"]), int(command.get("concurrency", 1))
        stream = command.get("method", "Echo") == "EchoStream"
        records: list[Record] = []
        while len(records) < count:
            size = 1 if stream else min(concurrency, count - len(records))
            pending = []
            for _ in range(size):
                self.recorder.ticket += 1
                ticket, started = self.recorder.ticket, time.perf_counter()
                if stream:
                    record = self._stream(stub, metadata, timeout, started)
                    pending.append((ticket, record))
                    continue
                holder: Record = {}
                future = stub.Echo.future(
                    echo_pb2.EchoRequest(message="x"),
                    timeout=timeout,
                    metadata=metadata,
                    wait_for_ready=True,
                )
                future.add_done_callback(
                    lambda _f, h=holder, s=started: h.setdefault(
                        "ms", round((time.perf_counter() - s) * 1000, 2)
                    )
                )
                pending.append((ticket, (future, holder)))
            for ticket, outcome in pending:
                record = outcome if isinstance(outcome, dict) else self._unary(*outcome)
                record["seen"] = self._seen(ticket)
                records.append(record)
        return records

    def _seen(self, ticket: int) -> Record | None:
        deadline = time.monotonic() + 5
        while ticket not in self.recorder.seen and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.recorder.seen.pop(ticket, None)

    @staticmethod
    def _unary(future: Any, holder: Record) -> Record:
        try:
            reply = future.result()
        except grpc.RpcError as error:
            record = {"backend": None, "code": error.code().name, "details": error.details()}
        else:
            record = {"backend": reply.backend, "code": "OK", "details": ""}
        deadline = time.monotonic() + 5
        while "ms" not in holder and time.monotonic() < deadline:
            time.sleep(0.001)
        record["ms"] = holder.get("ms")
        return record

    @staticmethod
    def _stream(
        stub: echo_pb2_grpc.EchoServiceStub,
        metadata: list[Any],
        timeout: float,
        started: float,
    ) -> Record:
        try:
            replies = list(
                stub.EchoStream(
                    iter([echo_pb2.EchoStreamRequest(message="x")]),
                    timeout=timeout,
                    metadata=metadata,
                    wait_for_ready=True,
                )
            )
        except grpc.RpcError as error:
            record = {"backend": None, "code": error.code().name, "details": error.details()}
        else:
            record = {"backend": replies[-1].backend, "code": "OK", "details": ""}
        record["ms"] = round((time.perf_counter() - started) * 1000, 2)
        return record

    def answer(self, command: Record) -> Record:
        started = time.perf_counter()
        records = self.batch(command)
        return {"records": records, "s": round(time.perf_counter() - started, 3)}

    def steady(self, service: str) -> None:
        stub = self.stub(service)
        seq = 0
        while True:
            seq += 1
            started = time.perf_counter()
            try:
                reply = stub.Echo(
                    echo_pb2.EchoRequest(message=str(seq)),
                    timeout=self.args.timeout,
                    wait_for_ready=True,
                )
            except grpc.RpcError as error:
                record = {"ok": False, "code": error.code().name, "details": error.details()}
            else:
                record = {"ok": True, "backend": reply.backend}
            record.update(
                seq=seq, ms=round((time.perf_counter() - started) * 1000, 2), at=time.time()
            )
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
            time.sleep(self.args.interval)


def main() -> None:
    parser = argparse.ArgumentParser(prog="traffic_caller")
    parser.add_argument("--agent", help="the agent (mesh_channel)")
    parser.add_argument("--xds-server", help="plain xds:/// channels to this xDS server")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--zone", default="", help="--xds-server: the node's zone")
    parser.add_argument("--commands", type=Path, help="serve batches of calls from DIR")
    parser.add_argument("--steady", metavar="SERVICE", help="call SERVICE until stopped")
    parser.add_argument("--timeout", type=float, default=5.0, help="--steady: each call's")
    parser.add_argument("--interval", type=float, default=0.002, help="--steady: pause")
    args = parser.parse_args()
    configure()  # logs to stderr
    caller = Caller(args)
    if args.steady:
        caller.steady(args.steady)
    else:
        serve_commands(args.commands, caller.answer)


if __name__ == "__main__":
    main()
