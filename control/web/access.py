"""Who may read the web page: with ``--operator-token-file``, only a caller that shows the
operator token; without one, anyone who reaches the address (127.0.0.1 unless
``--http-host`` says otherwise).

How a caller shows the token:

- ``Authorization: Bearer TOKEN`` on any request (scripts, curl);
- a browser opens ``/?token=TOKEN`` once (or types it into the form of the 401 page): the
  server answers with a redirect to ``/`` that sets the cookie ``mesh_page_PORT`` (HttpOnly,
  SameSite=Strict; named after the port, as browsers share cookies between the ports of a
  host), whose value is an HMAC of the token, not the token itself: the cookie opens the
  page, never the admin API's writes. It stops working when the token changes.

Tokens and cookies are compared in constant time. Without a token, a request's ``Host``
must name this server by address (an IP literal, ``localhost``, the ``--http-host`` or the
machine's name), so a web site cannot read the page through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket

from control.security import Access
from control.web._http import Request

COOKIE = "mesh_page"
_COOKIE_CONTEXT = b"mesh-control web page"


def cookie_value(token: bytes) -> str:
    """What the page's cookie holds for ``token``."""
    return hmac.new(token, _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def _host_name(header: str) -> str:
    """The host of a Host header, without its port or IPv6 brackets, lower-case."""
    if header.startswith("["):
        return header[1:].partition("]")[0].lower()
    return header.rpartition(":")[0].lower() if header.count(":") == 1 else header.lower()


class PageAccess:
    def __init__(self, access: Access, host: str) -> None:
        self._access = access
        self._names = {"localhost", host.lower(), socket.gethostname().lower()}
        self.cookie = COOKIE
        """The cookie's name: :data:`COOKIE` and the page's port, once bound (:meth:`bound`)."""

    def bound(self, port: int) -> None:
        self.cookie = f"{COOKIE}_{port}"

    @property
    def token_required(self) -> bool:
        return self._access.token_file is not None

    def _token(self) -> bytes | None:
        return self._access.operator_token() if self.token_required else None

    def admitted(self, request: Request) -> bool:
        """Whether ``request`` may read the page (see the module's docstring)."""
        if not self.token_required:
            return True
        token = self._token()
        if token is None:  # the file cannot be read (logged): nobody gets in
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1"), token
        ):
            return True
        cookie = request.cookie(self.cookie)
        return cookie is not None and hmac.compare_digest(
            cookie.encode("latin-1"), cookie_value(token).encode()
        )

    def exchange(self, given: str) -> str | None:
        """The cookie's value when ``given`` (from ``?token=``) is the operator token."""
        token = self._token()
        if token is None or not hmac.compare_digest(given.strip().encode(), token):
            return None
        return cookie_value(token)

    def host_refusal(self, request: Request) -> str | None:
        """Why the request's Host does not name this server (None: it does, or a token
        guards the page anyway)."""
        if self.token_required:
            return None
        host = _host_name(request.headers.get("host", "localhost"))
        try:
            ipaddress.ip_address(host)
            return None
        except ValueError:
            pass
        if host in self._names:
            return None
        return (
            f"Host {host!r} does not name this server; open the page by its address "
            "(e.g. http://127.0.0.1:PORT/), or give the server an --operator-token-file"
        )
