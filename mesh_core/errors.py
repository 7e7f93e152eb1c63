"""The control plane's own error tree. Foreign errors (grpc, etcd, OS) are converted once,
at the boundary, with ``raise ... from``.

::

    MeshError
    ├── ConfigError          a document or field is invalid (carries every problem found)
    ├── NotFoundError        a named service does not exist
    ├── ConflictError        a conditional write lost: the service changed since the revision read
    └── StoreUnavailableError  the backing store cannot be reached
"""

from __future__ import annotations

from collections.abc import Sequence


class MeshError(Exception):
    """Base of every error raised on purpose by this project."""


class ConfigError(MeshError):
    """Invalid configuration. ``problems`` holds one line per problem, each naming where it is:
    ``orders.yaml: document 1 (orders): policy.retry.attempts: must be between 1 and 5``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid configuration")


class NotFoundError(MeshError):
    """A named object does not exist."""


class ConflictError(MeshError):
    """A conditional write was refused because the object changed since the given revision."""


class StoreUnavailableError(MeshError):
    """The store cannot be reached; the last state read stays in force."""
