"""Checks a user's environment for the known packaging clash before a CLI starts.

``xds-protos`` ships a stale copy of the ``opentelemetry.proto`` modules (grpc/grpc#42926).
Installed after ``opentelemetry-proto`` it overwrites them, and the OTLP exporters then fail
with ``cannot import name 'InstrumentationScope'``.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys

FIX = "pip install --force-reinstall --no-deps opentelemetry-proto=={version}"


def otel_proto_problem() -> str | None:
    """Returns what is wrong and how to fix it, or None when the OTLP protos import."""
    try:
        from opentelemetry.proto.common.v1 import common_pb2

        common_pb2.InstrumentationScope  # noqa: B018 - the attribute the stale copy lacks
    except (ImportError, AttributeError) as error:
        try:
            version = importlib.metadata.version("opentelemetry-proto")
        except importlib.metadata.PackageNotFoundError:
            version = "<the version opentelemetry-sdk needs>"
        return (
            f"the opentelemetry-proto modules were overwritten by xds-protos' stale copy "
            f"({error}); OTLP export cannot work. Fix: {FIX.format(version=version)}"
        )
    return None


def _otlp_wanted() -> bool:
    from mesh_core.errors import TelemetryConfigError
    from mesh_core.telemetry import exporter_for

    try:
        return any(exporter_for(signal) == "otlp" for signal in ("traces", "metrics"))
    except TelemetryConfigError:
        return False  # telemetry set-up names the bad setting


def check_environment(prog: str) -> None:
    """When an OTLP exporter is asked for (``OTEL_*``), warns about the clash on stderr, and
    exits when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. A process that exports nothing does
    not load the OTLP protos to check them."""
    if not _otlp_wanted():
        return
    problem = otel_proto_problem()
    if problem is None:
        return
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        sys.stderr.write(f"{prog}: error: {problem}\n")
        raise SystemExit(2)
    sys.stderr.write(f"{prog}: warning: {problem}\n")
