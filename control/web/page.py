"""The web page of mesh-control (``mesh-control serve --http-port PORT``): a read-only view of
the mesh, served on the control server's own event loop.

Paths (any other is 404; any method but GET and HEAD is 405):

- ``/``: the page (``static/index.html``); ``/?token=TOKEN`` exchanges the operator token
  for the page's cookie (:mod:`control.web.access`) and redirects to ``/``;
- ``/static/NAME``: the page's script, style sheet and icon, shipped in the package (no
  build step, nothing fetched from elsewhere); open to anyone, they hold no data;
- ``/api/mesh``: the data (:mod:`control.web.view`), JSON, never cached.

``/`` and ``/api/mesh`` need the operator token when the server has one (401 otherwise).
"""

from __future__ import annotations

import ipaddress
import json
from importlib import resources

import structlog

from control.web._http import NO_STORE, HttpServer, Request, Response
from control.web.access import PageAccess
from control.web.view import MeshView

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"
JSON_TYPE = "application/json"

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mesh-control: token needed</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml"></head>
<body><main class="login"><h1>mesh-control</h1>
<p>{message}</p>
<form method="get" action="/"><label for="token">Operator token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit">Open</button></form>
<p>The token is the content of the server's <code>--operator-token-file</code>. It is
exchanged for a cookie that opens this page only.</p></main></body></html>
"""


def static_files() -> dict[str, tuple[bytes, str]]:
    """The files of ``control/web/static`` by their path on the page, with their types."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files("control.web") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES and entry.name != INDEX:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebPage:
    """The page's HTTP server: :meth:`start` binds ``host:port`` (port 0 picks one) and
    returns the page's URL; :meth:`stop` closes it."""

    def __init__(self, view: MeshView, access: PageAccess, host: str, port: int) -> None:
        self._view = view
        self._access = access
        self._static = static_files()
        self._index = (resources.files("control.web") / "static" / INDEX).read_bytes()
        self._http = HttpServer(self.handle, host, port)
        self.url = ""

    async def start(self) -> str:
        port = await self._http.start()
        self._access.bound(port)
        host = self._http.host
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        log.info(
            "web page serving",
            url=self.url,
            token="operator token" if self._access.token_required else "none",
        )
        if not self._access.token_required and not _loopback(host):
            log.warning(
                "the web page is open to anyone who reaches it: no --operator-token-file",
                url=self.url,
            )
        return self.url

    async def stop(self) -> None:
        await self._http.stop()

    async def handle(self, request: Request) -> Response:
        static = self._static.get(request.path)
        if static is not None:
            body, content_type = static
            return Response(200, body, content_type, [("Cache-Control", "no-cache")])
        if request.path not in ("/", "/api/mesh"):
            return Response.text(404, f"no such page: {request.path}")
        refusal = self._access.host_refusal(request)
        if refusal is not None:
            return Response.text(403, refusal)
        if request.path == "/" and "token" in request.query and self._access.token_required:
            return self._exchange(request)
        if not self._access.admitted(request):
            return self._unauthorized(request, "This page needs the operator token.")
        if request.path == "/":
            return Response(
                200, self._index, CONTENT_TYPES[".html"], [("Cache-Control", "no-cache")]
            )
        document = await self._view.document()
        body = json.dumps(document, separators=(",", ":")).encode()
        return Response(200, body, JSON_TYPE, [NO_STORE])

    def _exchange(self, request: Request) -> Response:
        cookie = self._access.exchange(request.query["token"][0])
        if cookie is None:
            log.warning("web page: wrong operator token", peer=request.peer)
            return self._unauthorized(request, "That is not the operator token.")
        return Response(
            303,
            headers=[
                ("Location", "/"),
                (
                    "Set-Cookie",
                    f"{self._access.cookie}={cookie}; Path=/; HttpOnly; SameSite=Strict",
                ),
                NO_STORE,
            ],
        )

    @staticmethod
    def _unauthorized(request: Request, message: str) -> Response:
        challenge = ("WWW-Authenticate", 'Bearer realm="mesh-control"')
        if request.path == "/api/mesh":
            return Response.text(401, "the operator token is needed", challenge)
        body = LOGIN.format(message=message).encode()
        return Response(401, body, CONTENT_TYPES[".html"], [challenge, NO_STORE])
