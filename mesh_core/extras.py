"""What a console script needs beyond the client library, checked before anything of it is
imported: a daemon run from the base install says which extra to install instead of failing
with an ImportError."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

DISTRIBUTION = "python-mesh"

DAEMON_MODULES = (
    "envoy.service.discovery.v3",
    "grpc_health.v1",
    "grpc_reflection.v1alpha",
    "google.rpc",
    "yaml",
    "cryptography",
    "opentelemetry.sdk",
)
"""What the ``agent`` and ``control`` extras add that the daemons (and meshctl) import."""


def missing(modules: Sequence[str]) -> list[str]:
    """Of ``modules`` (dotted names), those that cannot be imported here."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is absent
            found = False
        if not found:
            absent.append(name)
    return absent


def require(program: str, extra: str, modules: Sequence[str]) -> None:
    """Exits (status 2) with one line naming the extra to install when any of ``modules``
    is absent."""
    absent = missing(modules)
    if absent:
        sys.stderr.write(
            f"{program}: needs the '{extra}' extra of {DISTRIBUTION}: "
            f"pip install '{DISTRIBUTION}[{extra}]' (missing: {', '.join(absent)})\n"
        )
        raise SystemExit(2)
