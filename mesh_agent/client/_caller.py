"""The process's name in the service graph (``meshctl top``'s caller column).

The agent counts each process's calls under the name the process reports with its outcomes
(``ReportOutcomesRequest.caller``), read when each batch is sent, in this order:

1. the service identity the process uses (``mesh_channel(..., identity=NAME)``,
   ``mesh_server(NAME)``): what the process is, as its certificate says;
2. the name it gave itself: ``caller=NAME`` on ``mesh_channel``/``aio_mesh_channel``, else
   ``$MESH_CALLER``;
3. its xDS client id (``node_id=`` or ``$MESH_CLIENT_ID``, else ``HOST-PID``).

One name per process, as one identity per process: a second, different ``caller=`` raises
ConfigError. A process that takes an identity after its first calls shows up under both names
in the window those calls fall in.
"""

from __future__ import annotations

import os
import socket
import threading

from mesh_core.errors import ConfigError

CALLER_ENV = "MESH_CALLER"
MAX_CALLER_LENGTH = 253


def _valid(name: str) -> bool:
    return 0 < len(name) <= MAX_CALLER_LENGTH and name.isprintable() and name.strip() == name


def _checked(name: str, where: str) -> str:
    if not _valid(name):
        raise ConfigError(
            f"{where}: a caller name is 1 to {MAX_CALLER_LENGTH} printable characters with no "
            f"surrounding spaces, got {name!r}"
        )
    return name


class CallerName:
    """Thread-safe: set from the threads that make channels, read by the report thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given: str | None = None
        self.identity: str | None = None
        """The service identity the process uses (set by the process identity)."""
        self.client_id = ""
        """The xDS client id the process's bootstrap names (set when it is written)."""

    def give(self, name: str) -> None:
        """The name the process gives itself (``caller=``). ConfigError when it is malformed,
        or another was given before."""
        _checked(name, "caller")
        with self._lock:
            if self._given is not None and self._given != name:
                raise ConfigError(
                    f"this process already calls as {self._given!r}; a process has one caller "
                    f"name, so it cannot also call as {name!r}"
                )
            self._given = name

    def check_env(self) -> None:
        """ConfigError when ``$MESH_CALLER`` is set but malformed."""
        env = os.environ.get(CALLER_ENV)
        if env is not None:
            _checked(env, f"${CALLER_ENV}")

    def current(self, fallback: str = "") -> str:
        """The name to report now (see the module docstring); ``fallback`` when the process
        has no name of any kind (no bootstrap written by the client library)."""
        if self.identity:
            return self.identity
        if self._given:
            return self._given
        env = os.environ.get(CALLER_ENV)
        if env and _valid(env):  # a malformed one was refused when the channel was made
            return env
        if self.client_id:
            return self.client_id
        return fallback or default_client_id()


def default_client_id() -> str:
    """The xDS client id the client library's bootstrap uses when none is given."""
    return os.environ.get("MESH_CLIENT_ID") or f"{socket.gethostname()}-{os.getpid()}"


CALLER = CallerName()
"""The process's caller name."""


__all__ = ["CALLER", "CALLER_ENV", "CallerName", "default_client_id"]
