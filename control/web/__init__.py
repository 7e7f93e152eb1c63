"""The read-only web page of mesh-control (``mesh-control serve --http-port``): a small HTTP
server on the control server's event loop (:mod:`control.web.page`), who may read it
(:mod:`control.web.access`), the JSON it serves (:mod:`control.web.view`), and the page's
static files (``static/``: HTML, CSS and a script, no build step)."""

from control.web.access import PageAccess
from control.web.page import DEFAULT_HOST, WebPage
from control.web.view import MeshView

__all__ = ["DEFAULT_HOST", "MeshView", "PageAccess", "WebPage"]
