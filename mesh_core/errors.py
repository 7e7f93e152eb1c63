"""The mesh's one error tree. Every error raised on purpose is a :class:`MeshError`; foreign
errors (grpc, etcd, OS, PyYAML, cryptography) are converted once, at the boundary where they
enter, with ``raise ... from``. Each outer boundary converts this tree once more, in one
place: gRPC servicers through :mod:`mesh_core.status` (a table from class to status code),
command lines to one line on stderr and an exit code.

::

    MeshError
    ├── ConfigError              invalid configuration: a document, field, flag, URL or value;
    │   │                        ``problems`` holds one line per problem, each naming its place
    │   └── RegistrationError    a node's registrations refused (``registrations[2].address``)
    ├── NotFoundError            a named object does not exist
    ├── ConflictError            a conditional write lost: the object changed since it was read
    ├── UnavailableError         something the mesh needs cannot be reached now; retry later
    │   ├── StoreUnavailableError  the backing store (the last state read stays in force)
    │   └── NoConfigError        no config to serve yet (an agent that never reached the
    │                            control plane and holds no copy)
    ├── PermissionDeniedError    the caller may not do this (its identity names why)
    ├── PreconditionError        the server cannot do this as it is set up (a feature not
    │                            enabled, its signing CA expired); the message says what to
    │                            change
    ├── LimitExceeded            a request over a limit; ``limit`` names it
    │   ├── RateLimited          too many requests: ``retry_after`` seconds
    │   └── TooManyStreams       too many concurrent streams for one node
    ├── ProtocolError            a peer broke the xDS protocol
    ├── TlsError                 TLS files missing, unreadable or not usable together
    ├── CertError                a certificate cannot be made or read
    ├── TelemetryConfigError     an ``OTEL_*`` setting this process cannot honour
    ├── ComponentError           the agent's component graph or wiring
    │   ├── ComponentGraphError  a duplicate name, an unknown requirement, a cycle
    │   ├── ComponentLookupError a component asked for one it did not declare
    │   └── ComponentFatalError  a component cannot run as set up: the agent stops instead
    │                            of restarting it
    ├── SocketSetupError         the agent's unix socket cannot be set up as asked
    │   └── SocketInUseError     another live process holds it
    └── BootstrapConflictError   the process's xDS bootstrap already points elsewhere
"""

from __future__ import annotations

from collections.abc import Sequence


class MeshError(Exception):
    """Base of every error raised on purpose by this project."""


class ConfigError(MeshError):
    """Invalid configuration. ``problems`` holds one line per problem, each naming where it is:
    ``orders.yaml: document 1 (orders): policy.retry.attempts: must be between 1 and 5``."""

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


class RegistrationError(ConfigError):
    """A node's registrations were refused; nothing of the request was applied."""


class NotFoundError(MeshError):
    """A named object does not exist."""


class ConflictError(MeshError):
    """A conditional write was refused because the object changed since the given revision."""


class UnavailableError(MeshError):
    """Something the mesh needs cannot be reached now; a retry later may succeed."""


class StoreUnavailableError(UnavailableError):
    """The store cannot be reached; the last state read stays in force."""


class NoConfigError(UnavailableError):
    """There is no config to serve and there will be none for a while: the agent has never
    reached the control plane and holds no copy. Streams end with UNAVAILABLE and this reason,
    so clients fail their calls with it (and may try another server) instead of waiting."""


class PermissionDeniedError(MeshError):
    """The caller may not do this; the message names the caller and the rule."""


class PreconditionError(MeshError):
    """The server cannot do this as it is set up now (certificate signing without a signing
    CA, say); no retry helps until an operator changes it, and the message says how."""


class LimitExceeded(MeshError):
    """A request broke a limit. ``limit`` names it (a :class:`mesh_core.limits.Limits`
    field); ``who`` says whose request it was (``node``, ``caller``), for the log."""

    def __init__(self, limit: str, message: str, **who: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.who = who


class RateLimited(LimitExceeded):
    """Too many requests from one caller; ``retry_after`` is when the next may come (s)."""

    def __init__(self, limit: str, message: str, retry_after: float, **who: str) -> None:
        super().__init__(limit, message, **who)
        self.retry_after = retry_after


class TooManyStreams(LimitExceeded):
    """One node already holds as many concurrent streams as it may."""


class ProtocolError(MeshError):
    """A peer broke the xDS protocol (a first request without a node, say)."""


class TlsError(MeshError):
    """TLS files missing, unreadable or not usable together."""


class CertError(MeshError):
    """A certificate cannot be created or read; the message says which and why."""


class TelemetryConfigError(MeshError):
    """An ``OTEL_*`` setting this process cannot honour."""


class ComponentError(MeshError):
    """Base of the errors of the agent's component framework."""


class ComponentGraphError(ComponentError):
    """The set of components cannot be started: a duplicate name, an unknown requirement, a
    cycle, or an object that is not a component."""


class ComponentLookupError(ComponentError):
    """A component asked its context for something it cannot have."""


class ComponentFatalError(ComponentError):
    """A component cannot run as the agent was set up (its unix socket cannot be made as
    asked, say): the supervisor does not restart it but stops the agent with this error.
    Raised with ``from`` the error that says why; its message is that error's."""


class SocketSetupError(MeshError):
    """The agent's unix socket cannot be given the path, owner, group or mode asked for."""


class SocketInUseError(SocketSetupError):
    """Another live process serves on (or holds the lock of) the agent's socket."""


class BootstrapConflictError(MeshError):
    """The process's xDS bootstrap already points elsewhere; grpcio reads it only once."""
