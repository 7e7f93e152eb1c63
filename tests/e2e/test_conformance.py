"""Everything ``meshctl validate`` accepts is accepted by grpcio's own xDS client.

The conformance table (:mod:`tests.e2e.conformance_table`) names every enumerated option of
the service config. Each row becomes a service; grpcio's real xDS client, connected straight
to the control server, calls every one of them. Every call must succeed and ``meshctl
status`` must show the client's stream with every type ACKed and no NACK. New config fields
add rows there.

A second table holds what gRPC's xDS clients would reject: ``meshctl validate`` refuses each,
naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_core.names import client_listener_name
from tests.conftest import run_cli, wait_for
from tests.e2e.conformance_table import ALIAS_ONLY, CALLER_ZONE, write_services
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import meshctl, status_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_grpcio_acks_every_option_and_calls_succeed(procs: MeshProcesses, tmp_path: Path) -> None:
    # grpcio opens one ADS stream per channel target (gRFC A71), all with one node id.
    _, control = procs.start_control("--max-streams-per-node", "0")
    _, backend = procs.start_backend("backend-1")
    _, spare = procs.start_backend("backend-2")
    path = tmp_path / "conformance.yaml"
    names = write_services(path, backend, spare)
    assert len(names) == len(set(names))

    validated = run_cli("control.meshctl", "validate", "-f", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    meshctl(control, "apply", "-f", str(path))

    # Every service through its own Listener (what any grpcio client dials) and through the
    # alias the client library dials.
    alias_only = {f"conf-{row}" for row, _ in ALIAS_ONLY}
    targets = [n for n in names if n not in alias_only]
    targets += [client_listener_name(n) for n in names]
    caller = procs.python(
        "caller",
        "tests.xds_caller",
        "--server",
        control,
        "--node-id",
        "conformance",
        "--zone",
        CALLER_ZONE,
        "--hold",
        *targets,
    )

    def all_called() -> bool:
        assert caller.alive, caller.errors()[-3000:]
        return len(caller.lines()) == len(targets)

    wait_for(all_called, 150, "a call to every service")
    records = [json.loads(line) for line in caller.lines()]
    assert [r["target"] for r in records] == [f"xds:///{t}" for t in targets]
    failed = [r for r in records if not r["ok"]]
    assert not failed, failed

    status = status_json(control)
    streams = [n for n in status["nodes"] if n["node_id"] == "conformance"]
    assert streams, status
    for node in streams:
        for t in node["types"]:
            assert t["last_nack"] is None, t
            assert t["version_sent"] == t["version_acked"], t


# What grpcio (or any gRPC xDS client) would reject: validate refuses it, naming the field.
REFUSED: list[tuple[str, str, str]] = [
    (
        "lb-least-request",
        "policy: {lb: least_request}",
        "policy.lb: 'least_request' is not supported",
    ),
    ("lb-unknown", "policy: {lb: maglev}", "policy.lb: unknown load balancing policy 'maglev'"),
    *[
        (
            f"retry-{code.lower()}",
            f"policy: {{retry: {{attempts: 2, retry_on: [{code}]}}}}",
            f"policy.retry.retry_on[0]: '{code}' is not retryable",
        )
        for code in ("NOT_FOUND", "UNKNOWN", "ABORTED", "PERMISSION_DENIED")
    ],
    ("retry-attempts", "policy: {retry: {attempts: 6}}", "policy.retry.attempts: must be between"),
    (
        "retry-backoff-without-base",
        "policy: {retry: {attempts: 2, backoff: {max: 1s}}}",
        "policy.retry.backoff.base: required",
    ),
    (
        "outlier-percent",
        "policy: {outlier_detection: {max_ejection_percent: 101}}",
        "policy.outlier_detection.max_ejection_percent: must be between 0 and 100",
    ),
    (
        "outlier-threshold",
        "policy: {outlier_detection: {failure_percentage: {threshold: 150}}}",
        "policy.outlier_detection.failure_percentage.threshold: must be between 0 and 100",
    ),
    ("timeout-zero", "policy: {timeout: 0s}", "policy.timeout: must be greater than 0"),
    # gRPC and Envoy both reject a ring whose minimum exceeds its maximum (1024 when unset).
    (
        "hash-ring-min-above-max",
        "policy: {lb: ring_hash, hash: {channel: true, min_ring_size: 64, max_ring_size: 16}}",
        "policy.hash.max_ring_size: must be at least min_ring_size (64), got 16",
    ),
    (
        "hash-ring-max-below-default-min",
        "policy: {lb: ring_hash, hash: {channel: true, max_ring_size: 16}}",
        "policy.hash.max_ring_size: must be at least min_ring_size, which is 1024 when unset",
    ),
]


@pytest.mark.parametrize(("row", "policy", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_validate_refuses_what_grpc_clients_reject(
    tmp_path: Path, row: str, policy: str, expected: str
) -> None:
    path = tmp_path / f"{row}.yaml"
    path.write_text(f"name: orders\nendpoints: [{{address: 10.0.0.5:50051}}]\n{policy}\n")
    result = run_cli("control.meshctl", "validate", "-f", str(path))
    assert result.returncode != 0
    assert f"{path}: document 1 (orders): {expected}" in result.stdout, result.stdout
