"""The process's service identity, as grpcio's xDS stack reads it.

The bootstrap the client library writes always defines the certificate-provider instance
:data:`~mesh_core.identity_files.CERTIFICATE_PROVIDER` (gRFC A29, the ``file_watcher``
plugin), so that the TLS contexts the mesh serves (a strict service's Cluster, a server
Listener) are accepted by every process, whichever it makes first: a channel, a server, or
both. The bootstrap is read once per process, but which identity the process uses may only be
known later (``mesh_server("payments")`` after the first channel), so the provider reads the
files through a directory of the process's own::

    <process dir>/current -> <agent's certs dir>/<service>/current -> v.../{cert,key,ca}.pem

The link is made when the process first uses an identity (``mesh_channel(...,
identity=NAME)``, ``mesh_server(NAME)``); until then the provider finds no files, and only
calls to strict services, which need an identity, fail. One identity per process: the
certificate it presents as a caller is the one it presents as a server.

The provider reads the files every ``$MESH_IDENTITY_REFRESH`` seconds (default
:data:`~mesh_core.identity_files.DEFAULT_REFRESH_INTERVAL`), well inside a certificate's
half-life, when the agent renews it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc
import structlog

from mesh_agent.client._caller import CALLER
from mesh_agent.client._link import AgentLink
from mesh_core.errors import ConfigError, PermissionDeniedError, UnavailableError
from mesh_core.identity_files import (
    CURRENT,
    DEFAULT_REFRESH_INTERVAL,
    IdentityPaths,
    certs_dir,
    identity_paths,
)

log = structlog.get_logger(__name__)
REFRESH_ENV = "MESH_IDENTITY_REFRESH"
HOLD_WAIT = 10.0  # seconds to wait for the agent to have the certificate in place


def refresh_interval() -> float:
    """``$MESH_IDENTITY_REFRESH`` seconds, else the default; ConfigError when malformed."""
    text = os.environ.get(REFRESH_ENV)
    if not text:
        return DEFAULT_REFRESH_INTERVAL
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"${REFRESH_ENV}: expected seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"${REFRESH_ENV}: must be positive, got {text!r}")
    return value


class ProcessIdentity:
    """The process's identity directory (made on first use, removed at exit) and which
    service's identity it points at. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self.service: str | None = None
        self.spiffe_id = ""
        """The identity's SPIFFE id, once the agent told it."""

    def directory(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="mesh-identity-"))
                atexit.register(shutil.rmtree, self._dir, True)
            return self._dir

    def provider(self) -> dict[str, Any]:
        """The bootstrap's ``certificate_providers`` entry: a ``file_watcher`` on the files
        through the process directory's ``current`` link."""
        return IdentityPaths("process", self.directory()).file_watcher(refresh_interval())

    def use(self, service: str, current: Path) -> None:
        """Points the process's identity at ``current`` (the agent's ``current`` link of
        ``service``). ConfigError when the process already uses another identity."""
        link = self.directory() / CURRENT
        with self._lock:
            if self.service == service:
                return
            if self.service is not None:
                raise ConfigError(
                    f"this process already uses the identity of {self.service!r}; a process "
                    f"has one identity, as a caller and as a server, so it cannot also use "
                    f"{service!r}"
                )
            tmp = link.with_name(f".{CURRENT}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(current)
            tmp.replace(link)
            self.service = service
            CALLER.identity = service  # the process's name in the service graph too
        log.info("process identity in use", service=service, files=str(current))


IDENTITY = ProcessIdentity()
"""The process's identity: grpcio reads one bootstrap per process."""


def hold_identity(link: AgentLink, service: str, wait: float = HOLD_WAIT) -> Path:
    """Asks the agent (through ``link``) to keep ``service``'s identity, waits for its
    certificate, and makes it the process's. Returns the agent's ``current`` directory of
    it. Raises PermissionDeniedError when the control server refused it (the node may not
    hold it), UnavailableError when the certificate is not in place in time, and, when the
    agent cannot be reached, uses the files the agent keeps at the default place (its last
    certificate keeps working) and logs a warning."""
    try:
        status = link.hold_identity(service, wait)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise ConfigError(f"identity {service!r}: {error.details()}") from None
        current = identity_paths(service, certs_dir()).current
        log.warning(
            "agent not reached to hold the identity; using its files as they are",
            service=service,
            files=str(current),
            agent=link.target,
        )
        IDENTITY.use(service, current)
        return current
    if not status.HasField("not_after"):
        reason = status.last_error or f"no certificate after {wait:g} s"
        kind = PermissionDeniedError if status.refused else UnavailableError
        raise kind(f"identity {service!r} not held by the node's agent: {reason}")
    current = Path(status.certificate_file).parent
    IDENTITY.use(service, current)
    IDENTITY.spiffe_id = status.spiffe_id
    return current


__all__ = ["IDENTITY", "REFRESH_ENV", "ProcessIdentity", "hold_identity", "refresh_interval"]
