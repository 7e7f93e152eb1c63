"""A small, strict HTTP/1.1 server on asyncio streams, for the read-only web page: one request
per connection (``Connection: close``), GET and HEAD only, no request body.

What it refuses, and how: a head over :data:`MAX_HEAD` bytes (431), a client that does not
send its whole head within :data:`HEAD_TIMEOUT` seconds (408, then the connection is closed),
a malformed request line or header (400), another HTTP version (505), another method (405,
with ``Allow``), a request that carries a body (400), more than :data:`MAX_CONNECTIONS`
connections at once (503). A response that the client does not read within
:data:`WRITE_TIMEOUT` seconds is abandoned. Every response carries :data:`SECURITY_HEADERS`.

The handler (:data:`Handler`) maps a parsed :class:`Request` to a :class:`Response`; it owns
routing and access. Event-loop owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs

import structlog

from mesh_core.aio import end_tasks

log = structlog.get_logger(__name__)

MAX_HEAD = 16 * 1024
"""Bytes of a request line and headers, at most."""
MAX_HEADERS = 100
MAX_QUERY_FIELDS = 20
HEAD_TIMEOUT = 10.0
"""Seconds a client has to send its request's head."""
WRITE_TIMEOUT = 10.0
"""Seconds a client has to take a response."""
MAX_CONNECTIONS = 64
STOP_TIMEOUT = 2.0
LINGER_SECONDS = 0.5
LINGER_BYTES = 64 * 1024
"""After a response, how long and how much of what the client still sends is read and
dropped before the connection is closed (see ``HttpServer._linger``)."""
METHODS = ("GET", "HEAD")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
"""Headers on every response: the page runs only its own files, is never framed, and its
URL (which may hold ``?token=``) is never sent on."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET = re.compile(r"^/[\x21-\x7e]*$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ``, `` (``;`` for Cookie)."""
    peer: str

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def text(cls, status: int, text: str, *headers: tuple[str, str]) -> Response:
        return cls(status, (text + "\n").encode(), headers=[*headers, NO_STORE])


NO_STORE = ("Cache-Control", "no-store")

Handler = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """A request refused before it reaches the handler."""

    def __init__(self, status: int, message: str, *headers: tuple[str, str]) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def parse_head(head: bytes, peer: str) -> Request:
    """The request of a head (request line and headers, ending with an empty line); raises
    HttpError naming what is wrong."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "malformed request line: bad method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HttpError(505, f"{version} is not supported: HTTP/1.1 only")
        raise HttpError(400, "malformed request line: bad version")
    if not _TARGET.match(target):
        raise HttpError(400, "the request target must be a path starting with /")
    headers: dict[str, str] = {}
    fields = [line for line in lines[1:] if line]
    if len(fields) > MAX_HEADERS:
        raise HttpError(431, f"at most {MAX_HEADERS} header fields")
    for line in fields:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, "malformed header field")
        key, value = name.lower(), value.strip(" \t")
        if key == "host" and key in headers:
            raise HttpError(400, "more than one Host header")
        joiner = "; " if key == "cookie" else ", "
        headers[key] = f"{headers[key]}{joiner}{value}" if key in headers else value
    if version == "HTTP/1.1" and "host" not in headers:
        raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    if method not in METHODS:
        raise HttpError(
            405, f"{method} not allowed: this page is read-only", ("Allow", ", ".join(METHODS))
        )
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0":
        raise HttpError(400, f"a {method} request carries no body")
    path, _, query = target.partition("?")
    try:
        parameters = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise HttpError(400, f"at most {MAX_QUERY_FIELDS} query parameters") from None
    return Request(method, path, parameters, headers, peer)


def encode(response: Response, method: str) -> bytes:
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS),
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if method == "HEAD" else head + response.body


class HttpServer:
    """Serves ``handler`` on ``host:port`` (:meth:`start`, :meth:`stop`); ``head_timeout``
    and ``max_connections`` as :data:`HEAD_TIMEOUT` and :data:`MAX_CONNECTIONS`."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._handler = handler
        self.host = host
        self.port = port
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[object]] = set()

    async def start(self) -> int:
        """Binds and serves; the port bound (``port`` 0 picks one)."""
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stops accepting and ends the open connections (at most :data:`STOP_TIMEOUT`)."""
        if self._server is not None:
            self._server.close()
        stuck = await end_tasks(list(self._connections), STOP_TIMEOUT)
        if stuck:
            log.error("web connections did not end when cancelled", count=len(stuck))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            if len(self._connections) > self.max_connections:
                await self._send(writer, Response.text(503, "too many connections"), "GET")
                return
            method = "GET"
            try:
                # A client that closes or resets before its head ends (a browser's spare
                # connection) ends here, in the outer except, without a word.
                request = await self._read(reader, peer_text, self.head_timeout)
            except HttpError as error:
                response = Response.text(error.status, str(error), *error.headers)
            else:
                method = request.method
                try:
                    response = await self._handler(request)
                except Exception:
                    log.exception("web request failed", peer=peer_text, path=request.path)
                    response = Response.text(500, "internal error; see the server's log")
            await self._send(writer, response, method)
            log.debug("web request", method=method, status=response.status, peer=peer_text)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or would not take the response
        finally:
            if task is None or not task.cancelling():  # not when the server stops
                with contextlib.suppress(Exception):
                    await self._linger(reader, writer)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Ends the response (FIN), then reads what the client still sends for a moment:
        closing with unread input (a refused request's body, a head past the limit) makes
        the kernel send RST, which can destroy the response before the client reads it."""
        if writer.is_closing() or not writer.can_write_eof():
            return
        writer.write_eof()
        left = LINGER_BYTES
        async with asyncio.timeout(LINGER_SECONDS):
            while left > 0 and (data := await reader.read(min(left, 65536))):
                left -= len(data)

    @staticmethod
    async def _read(reader: asyncio.StreamReader, peer: str, timeout: float) -> Request:
        try:
            async with asyncio.timeout(timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise HttpError(408, f"the request's head took longer than {timeout:g}s") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"the request's head is over {MAX_HEAD} bytes") from None
        return parse_head(head[:-4], peer)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, method: str) -> None:
        writer.write(encode(response, method))
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()
