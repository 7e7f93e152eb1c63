"""A backend for the two arities the demo backend has no method for (``mesh.demo.v1.EchoService``
has a unary ``Echo`` and a bidi ``EchoStream``): ``/test.v1.Arity/UnaryStream`` (two replies)
and ``/test.v1.Arity/StreamUnary`` (the requests joined), on raw bytes with grpc's generic
handlers. A call whose first request is ``fail`` is answered UNAVAILABLE.

    python -m tests.e2e.arity_backend --ready-file PATH   # writes HOST:PORT there
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

SERVICE = "test.v1.Arity"


def _check(first: bytes, context: grpc.ServicerContext) -> None:
    if first == b"fail":
        context.abort(grpc.StatusCode.UNAVAILABLE, "arity backend told to fail")


def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    _check(request, context)
    yield from (request, request)


def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    items = list(requests)  # all read before the answer (see tests/unit/test_mesh_channel.py)
    _check(items[0], context)
    return b"".join(items)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.arity_backend")
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    handlers = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[handlers])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    partial = args.ready_file.with_name(args.ready_file.name + ".tmp")
    partial.write_text(f"127.0.0.1:{port}\n")
    os.replace(partial, args.ready_file)
    while not stop.wait(0.5):
        pass
    server.stop(1).wait()


if __name__ == "__main__":
    main()
