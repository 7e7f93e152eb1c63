"""The web page's HTTP layer against a real mesh-control (``serve --http-port 0``): the
operator token (header, the ``?token=`` exchange for a cookie), what it refuses (methods,
paths, bodies, oversized heads, foreign Host headers), its headers, the JSON it serves, and
where it binds. The page in a browser: ``test_web_browser.py``."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import meshctl, page_url, service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TOKEN = "s3cret-operator-token"


def request(
    url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def raw(url: str, data: bytes) -> bytes:
    """Sends ``data`` as it is; what the server answers before it closes."""
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One mesh-control with an operator token and the page on a free port, with service
    ``echo`` applied, shared by the module's tests (they only read)."""
    workdir = tmp_path_factory.mktemp("web")
    procs = MeshProcesses(workdir)
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    try:
        proc, control = procs.start_control(
            "--operator-token-file", str(token_file), "--http-port", "0"
        )
        url = page_url(proc)
        meshctl(
            control,
            "--token-file",
            str(token_file),
            "apply",
            "-f",
            str(service_yaml(workdir / "echo.yaml", "echo", "127.0.0.1:1")),
            "-m",
            "first echo",
        )
        yield url
    finally:
        procs.stop_all()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_the_token_guards_the_page_and_its_data(guarded: str) -> None:
    for path in ("/", "/api/mesh"):
        status, headers, _ = request(guarded, path)
        assert status == 401, path
        assert headers["www-authenticate"] == 'Bearer realm="mesh-control"'
        status, _, _ = request(guarded, path, headers={"Authorization": "Bearer wrong"})
        assert status == 401, path
    status, headers, body = request(guarded, "/", headers=BEARER)
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script src="/static/app.js" defer></script>' in body
    # The page's own files hold no data: open to anyone.
    status, headers, _ = request(guarded, "/static/app.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"


def test_token_in_the_url_is_exchanged_for_a_cookie(guarded: str) -> None:
    status, _, body = request(guarded, "/?token=wrong")
    assert status == 401 and b"That is not the operator token." in body
    status, headers, _ = request(guarded, f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    assert headers["cache-control"] == "no-store"
    cookie, *attributes = headers["set-cookie"].split("; ")
    port = guarded.rstrip("/").rpartition(":")[2]
    assert cookie.startswith(f"mesh_page_{port}=")  # one per page: browsers share by host
    assert set(attributes) == {"Path=/", "HttpOnly", "SameSite=Strict"}
    assert TOKEN not in cookie  # the cookie opens the page, not the admin API
    status, _, body = request(guarded, "/api/mesh", headers={"Cookie": f"other=1; {cookie}"})
    assert status == 200 and json.loads(body)["services"][0]["name"] == "echo"
    name, _, value = cookie.partition("=")
    status, _, _ = request(guarded, "/api/mesh", headers={"Cookie": f"{name}={value[:-1]}0"})
    assert status == 401


def test_the_data(guarded: str) -> None:
    status, headers, body = request(guarded, "/api/mesh", headers=BEARER)
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    document = json.loads(body)
    [echo] = document["services"]
    assert echo["name"] == "echo" and echo["state"] == "ok" and echo["revision"] >= 1
    assert echo["endpoints"] == [
        {
            "address": "127.0.0.1:1",
            "zone": "",
            "weight": 1,
            "node": "",
            "source": "config",
            "state": "serving",
            "checks": [],  # no node checks it
        }
    ]
    [change] = document["changes"]
    assert change["action"] == "apply" and change["who"] == "token"
    assert change["outcome"] == "ok" and change["message"] == "first echo"
    assert change["services"] == ["echo"]
    assert document["traffic"] == {"available": True, "edges": []}
    assert document["nodes"] == [] and document["nacks"] == [] and document["errors"] == []


def test_read_only_strict_paths_and_headers(guarded: str) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, _ = request(guarded, "/api/mesh", method, BEARER)
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
    for path in ("/nope", "/api/mesh/", "/static/", "/static/index.html", "/static/../cli.py"):
        status, _, _ = request(guarded, path, headers=BEARER)
        assert status == 404, path
    status, headers, body = request(guarded, "/api/mesh", "HEAD", BEARER)
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    for path in ("/", "/api/mesh", "/nope", "/static/style.css"):
        _, headers, _ = request(guarded, path, headers=BEARER)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"


def test_malformed_requests_are_refused(guarded: str) -> None:
    def status_of(answer: bytes) -> int:
        return int(answer.split(b" ", 2)[1])

    host = guarded.removeprefix("http://").rstrip("/")
    assert status_of(raw(guarded, b"GET /api/mesh\r\n\r\n")) == 400
    assert status_of(raw(guarded, b"GET /api/mesh HTTP/2.0\r\nHost: x\r\n\r\n")) == 505
    assert status_of(raw(guarded, b"GET /api/mesh HTTP/1.1\r\n\r\n")) == 400  # no Host
    body = b"GET /api/mesh HTTP/1.1\r\nHost: %s\r\nContent-Length: 3\r\n\r\nabc" % host.encode()
    assert status_of(raw(guarded, body)) == 400
    many = "&".join(f"a{i}=1" for i in range(30)).encode()
    assert status_of(raw(guarded, b"GET /?%s HTTP/1.1\r\nHost: x\r\n\r\n" % many)) == 400
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
    assert status_of(raw(guarded, huge)) == 431


def test_without_a_token_it_binds_to_localhost_and_checks_the_host(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    proc, _ = procs.start_control("--http-port", "0")
    url = page_url(proc)
    assert url.startswith("http://127.0.0.1:")
    status, _, body = request(url, "/api/mesh")
    assert status == 200 and json.loads(body)["services"] == []
    # A name that is not this server's (DNS rebinding): refused without a token.
    status, _, body = request(url, "/api/mesh", headers={"Host": "attacker.example:80"})
    assert status == 403 and b"does not name this server" in body
    status, _, _ = request(url, "/", headers={"Host": "localhost"})
    assert status == 200
    status, _, _ = request(url, "/?token=anything")  # no token to exchange: just the page
    assert status == 200
    # The page's port taken: mesh-control says which flag, and exits.
    port = url.rstrip("/").rpartition(":")[2]
    result = run_cli(
        "control", "serve", "--listen", "127.0.0.1:0", "--store", "memory:", "--http-port", port
    )
    assert result.returncode == 1
    assert f"--http-host 127.0.0.1 --http-port {port}: cannot serve the web page" in result.stderr
    result = run_cli("control", "serve", "--store", "memory:", "--http-host", "0.0.0.0")
    assert result.returncode == 1
    assert "--http-host needs --http-port" in result.stderr
