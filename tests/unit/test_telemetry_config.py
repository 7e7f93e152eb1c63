"""Which exporters the standard OTEL_* settings turn on: off by default, a clear error for a
setting this process cannot honour."""

from __future__ import annotations

import pytest

from mesh_core.telemetry import TelemetryConfigError, _check_protocol, exporter_for

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("env", "traces", "metrics"),
    [
        ({}, "none", "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "otlp", "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, "otlp", "none"),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4317"}, "none", "otlp"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_METRICS_EXPORTER": "none"},
            "otlp",
            "none",
        ),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console", "none"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp", "none"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"},
            "none",
            "none",
        ),
    ],
)
def test_exporters_follow_the_standard_settings(
    env: dict[str, str], traces: str, metrics: str
) -> None:
    assert (exporter_for("traces", env), exporter_for("metrics", env)) == (traces, metrics)


@pytest.mark.parametrize("value", ["zipkin", "otlp,console", "jaeger"])
def test_an_exporter_we_do_not_have_is_named(value: str) -> None:
    with pytest.raises(TelemetryConfigError, match=f"OTEL_TRACES_EXPORTER={value!r}"):
        exporter_for("traces", {"OTEL_TRACES_EXPORTER": value})


def test_only_otlp_over_grpc() -> None:
    _check_protocol("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        _check_protocol(
            "traces",
            {
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
        )
