"""The web page's HTTP server (:class:`control.web._http.HttpServer`) on a real loopback
socket with a handler of the test's: slow clients, the connection cap, a stop with clients
connected. Routing, access and headers through a real mesh-control: tests/e2e/test_web.py."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from control.web._http import HttpServer, Request, Response

pytestmark = pytest.mark.timeout(20)


async def _hello(request: Request) -> Response:
    return Response.text(200, f"hello {request.path}")


async def _answer(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_slow_client_gets_408_and_is_closed() -> None:
    server = HttpServer(_hello, "127.0.0.1", 0, head_timeout=0.3)
    port = await server.start()
    try:
        started = time.monotonic()
        answer = await _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends its head
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert 0.25 < time.monotonic() - started < 5
        assert b"Connection: close\r\n" in answer
        answer = await _answer(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"hello /x\n")
    finally:
        await server.stop()


async def test_connections_over_the_cap_get_503_and_stop_ends_the_rest() -> None:
    server = HttpServer(_hello, "127.0.0.1", 0, max_connections=2)
    port = await server.start()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.1)  # both accepted, waiting for their heads
    answer = await _answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 3
    for reader, writer in idle:
        assert await reader.read() == b""  # closed by the stop
        writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_client_that_leaves_early_is_no_error() -> None:
    server = HttpServer(_hello, "127.0.0.1", 0)
    port = await server.start()
    try:
        with structlog.testing.capture_logs() as logs:
            for data in (b"", b"GET / HTTP/1.1\r\nHo"):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                await writer.drain()
                writer.close()
            answer = await _answer(port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        await server.stop()
    assert answer.endswith(b"hello /after\n")
    assert [e for e in logs if e["log_level"] != "debug"] == []
    assert [e["status"] for e in logs if e["event"] == "web request"] == [200]
