"""Checks a user's environment for the known packaging clash before a CLI starts.

``xds-protos`` ships a stale copy of the ``opentelemetry.proto`` modules (grpc/grpc#42926).
Installed after ``opentelemetry-proto`` it overwrites them, and the OTLP exporters then fail
with ``cannot import name 'InstrumentationScope'``.
"""

from __future__ import annotations

import os
import sys

FIX = "pip install --force-reinstall --no-deps opentelemetry-proto=={version}"


def otel_proto_problem() -> str | None:
    """Returns what is wrong and how to fix it, or None when the OTLP protos import."""
    try:
        from opentelemetry.proto.common.v1 import common_pb2

        common_pb2.InstrumentationScope  # noqa: B018 - the attribute the stale copy lacks
    except (ImportError, AttributeError) as error:
        import importlib.metadata  # only to name the version in the fix

        try:
            version = importlib.metadata.version("opentelemetry-proto")
        except importlib.metadata.PackageNotFoundError:
            version = "<the version opentelemetry-sdk needs>"
        return (
            f"the opentelemetry-proto modules were overwritten by xds-protos' stale copy "
            f"({error}); OTLP export cannot work. Fix: {FIX.format(version=version)}"
        )
    return None


def check_environment(prog: str) -> None:
    """Warns about the clash on stderr; exits when OTLP export is asked for and cannot work."""
    problem = otel_proto_problem()
    if problem is None:
        return
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        sys.stderr.write(f"{prog}: error: {problem}\n")
        raise SystemExit(2)
    sys.stderr.write(f"{prog}: warning: {problem}\n")
