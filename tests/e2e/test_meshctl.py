"""``meshctl`` as an operator meets it: files with nothing in them, servers it cannot reach or
that want TLS, and the shape of its JSON output."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from control.config import load_documents, service_to_dict
from mesh.v1 import node_pb2, node_pb2_grpc
from mesh_xds.testing import AdsClient
from mesh_xds.types import LISTENER
from tests.conftest import eventually, run_cli
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import Pki, meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    "text",
    ["", "# nothing here yet\n", "---\n", "---\n# still nothing\n---\n"],
    ids=["empty", "comment-only", "separator-only", "separators-and-comments"],
)
def test_validate_and_apply_refuse_a_file_without_services_alike(tmp_path: Path, text: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(text)
    validate = run_cli("control.meshctl", "validate", "-f", str(path))
    # apply refuses before it contacts any server: nothing listens on this port.
    apply = run_cli("control.meshctl", "--control", "127.0.0.1:1", "apply", "-f", str(path))
    expected = f"{path}: no service documents"
    assert validate.returncode != 0 and apply.returncode != 0
    assert expected in validate.stdout, validate.stdout + validate.stderr
    assert expected in apply.stderr, apply.stderr
    assert "cannot reach" not in apply.stderr


def test_validate_refuses_a_directory_without_config_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("name: orders\n")
    result = run_cli("control.meshctl", "validate", "-f", str(tmp_path))
    assert result.returncode != 0
    assert f"{tmp_path}: no service documents" in result.stdout


def _meshctl(*args: str) -> tuple[int, str]:
    env = {"MESH_CONTROL": "", "MESH_TLS_CERT": "", "MESH_TLS_KEY": "", "MESH_TLS_CA": ""}
    result = run_cli("control.meshctl", "--timeout", "5", *args, env=env)
    return result.returncode, result.stderr


def test_nothing_listening_names_the_flag_and_the_variable() -> None:
    code, stderr = _meshctl("--control", "127.0.0.1:1", "get", "services")
    assert code != 0
    assert stderr.startswith("meshctl: cannot reach mesh-control at 127.0.0.1:1: ")
    assert "--control" in stderr and "$MESH_CONTROL" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_tls_mistakes_say_what_to_change(procs: MeshProcesses, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    operator = pki.issue("operator", operator="alice")
    server = pki.issue("server", server="127.0.0.1")
    _, secure = procs.start_control(name="secure", tls_dir=server)
    _, plain = procs.start_control(name="plain")

    # No certificate for a server that requires mTLS: not "the server is down".
    code, stderr = _meshctl("--control", secure, "get", "services")
    assert code != 0
    assert "requires mTLS" in stderr and "--tls-cert" in stderr and "$MESH_TLS_CERT" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # no TLS lines from grpc's core

    # A certificate for a server without TLS.
    code, stderr = _meshctl("--control", plain, *Pki.flags(operator), "get", "services")
    assert code != 0
    assert "the server does not speak TLS" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr

    # A certificate from another CA: the server closes the connection.
    other = Pki(tmp_path / "other")
    stranger = other.issue("stranger", operator="mallory")
    flags = Pki.flags(stranger)
    flags[flags.index("--tls-ca") + 1] = str(operator / "ca.pem")
    code, stderr = _meshctl("--control", secure, *flags, "get", "services")
    assert code != 0
    assert f"refused the client certificate {stranger / 'cert.pem'}" in stderr, stderr

    # Trusting another CA than the server's.
    code, stderr = _meshctl("--control", secure, *Pki.flags(stranger), "get", "services")
    assert code != 0
    assert "not signed by the CA in --tls-ca" in stderr, stderr

    # The right certificate works.
    code, stderr = _meshctl("--control", secure, *Pki.flags(operator), "get", "services")
    assert code == 0, stderr


async def test_status_json_has_one_type_per_field_and_every_key(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control()

    async def status() -> dict[str, Any]:
        return dict(json.loads(await asyncio.to_thread(meshctl, control, "status", "-o", "json")))

    empty = await status()
    assert empty["nodes"] == [] and empty["store_problems"] == []
    assert isinstance(empty["store_revision"], int) and isinstance(empty["snapshot_revision"], int)

    path = tmp_path / "echo.yaml"
    path.write_text("name: echo\nendpoints: [{address: '127.0.0.1:9'}]\n")
    meshctl(control, "apply", "-f", str(path))
    got = json.loads(meshctl(control, "get", "services", "-o", "json"))
    async with AdsClient(control, "node-1") as client:
        client.subscribe(LISTENER, ["echo"])
        await client.wait_for(lambda c: bool(c.of_type(LISTENER)))

        async def acked() -> dict[str, Any] | None:
            current = await status()
            acked = current["nodes"] and current["nodes"][0]["types"][0]["version_acked"]
            return current if acked else None

        current = await eventually(acked, 30, "the node's ACK in status", every=0.05)
    assert current["store_revision"] == got["revision"] and isinstance(got["revision"], int)
    node = current["nodes"][0]
    for key in ("registrations", "local_clients", "health", "zone", "connected_since"):
        assert key in node, key
    lds = node["types"][0]
    assert isinstance(lds["responses_sent"], int) and lds["responses_sent"] == 1
    assert lds["last_nack"] is None and lds["resource_names"] == ["echo"]


CANARY = """\
name: orders
endpoints:
  - {address: 127.0.0.1:50051, zone: eu-1a, labels: {version: v1}}
  - {address: 127.0.0.1:50052, labels: {version: v2}}
policy: {timeout: 5s}
subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
routes:
  - name: refund
    match: {method: /shop.Orders/Refund}
    to: {v2: 100}
  - match: {headers: {x-canary: {exact: "yes"}}}
    to: {v2: 100}
    policy: {timeout: 2s, retry: {attempts: 2}}
  - match: {method: "/shop.Orders/*", headers: {x-debug: {present: false}}}
    to: {v1: 90, v2: 10}
    fault: {abort: {status: UNAVAILABLE, percent: 20}, delay: {fixed: 50ms, percent: 10},
            max_active_faults: 5}
"""

SHOWN = """\
NAME    ENDPOINTS  REVISION
orders  2          {revision}

ZONE   ENDPOINTS  WEIGHT
-      2          2
eu-1a  1          1
(a caller's own zone first, then the others; the next joins below 70% usable)

SUBSET  LABELS      ENDPOINTS  CLUSTER
v1      version=v1  1          orders/v1
v2      version=v2  2          orders/v2
(the subsets count 1 endpoint(s) registered by nodes)

ROUTE    MATCH                                            TO               TIMEOUT       RETRY                      FAULT
refund   method=/shop.Orders/Refund                       v2 100%          5s (service)  -                          -
route-1  header x-canary exact "yes"                      v2 100%          2s            2 attempts on UNAVAILABLE  -
route-2  method=/shop.Orders/* and header x-debug absent  v1 90% · v2 10%  5s (service)  -                          abort UNAVAILABLE 20% · delay 50ms 10% · at most 5 active
default  every other call (implicit)                      whole service    5s (service)  -                          -
"""  # noqa: E501


def test_get_one_service_shows_its_subsets_and_routes(procs: MeshProcesses, tmp_path: Path) -> None:
    """The table's lines stay as they were (scripts read them); the subsets and routes come
    after, counting an endpoint a node registered; -o json and -o yaml carry them whole."""
    _, control = procs.start_control()
    (tmp_path / "orders.yaml").write_text(CANARY)
    (tmp_path / "echo.yaml").write_text("name: echo\nendpoints: [{address: '127.0.0.1:9'}]\n")
    applied = meshctl(control, "apply", "-f", str(tmp_path))
    revision = dict(re.findall(r"service/(\S+) configured \(revision (\d+)\)", applied))
    with grpc.insecure_channel(control) as channel:
        node_pb2_grpc.NodeServiceStub(channel).SetRegistrations(
            node_pb2.SetRegistrationsRequest(
                node_id="web-7",
                registrations=[
                    node_pb2.Registration(
                        service="orders", address="127.0.0.1:50053", labels={"version": "v2"}
                    )
                ],
            ),
            timeout=10,
        )

    runs = ["orders"], ["orders", "-o", "json"], ["orders", "-o", "yaml"], [], ["echo"]
    with ThreadPoolExecutor(len(runs)) as pool:
        table, as_json, as_yaml, every, echo = pool.map(
            lambda words: run_cli("control.meshctl", "--control", control, "get", "svc", *words),
            runs,
        )
    for result in (table, as_json, as_yaml, every, echo):
        assert result.returncode == 0 and result.stderr == "", result.stderr

    assert table.stdout.splitlines() == SHOWN.format(revision=revision["orders"]).splitlines()
    # A service without subsets or routes, and the list of every service: the table alone.
    assert echo.stdout.splitlines() == [
        "NAME  ENDPOINTS  REVISION",
        f"echo  1          {revision['echo']}",
    ]
    assert [line.split() for line in every.stdout.splitlines()] == [
        ["NAME", "ENDPOINTS", "REVISION"],
        ["echo", "1", revision["echo"]],
        ["orders", "2", revision["orders"]],
    ]

    (expected,) = load_documents(CANARY, "orders.yaml")
    (stored,) = json.loads(as_json.stdout)["services"]
    assert stored["service"] == service_to_dict(expected)
    assert stored["service"]["routes"][2]["fault"]["max_active_faults"] == 5
    assert load_documents(as_yaml.stdout, "get.yaml") == [expected]


def test_ring_hash_services_show_their_hash_and_warn_of_what_does_not_stick(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    """``get`` shows what a ring_hash service hashes on; ``validate`` and ``apply`` warn (on
    stderr, and still succeed) of a ring_hash without a hash and of a hash under a split."""
    _, control = procs.start_control()
    carts = tmp_path / "carts.yaml"
    carts.write_text(
        "name: carts\nendpoints: [{address: '127.0.0.1:9', labels: {v: a}}]\n"
        "subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]\n"
        "policy: {lb: ring_hash, hash: {header: x-user-id, min_ring_size: 16}}\n"
        "routes: [{to: {a: 9, b: 1}}]\n"
    )
    random = tmp_path / "random.yaml"
    random.write_text(
        "name: random\nendpoints: [{address: '127.0.0.1:9'}]\npolicy: {lb: ring_hash}\n"
    )
    split = (
        "meshctl: warning: service/carts: routes[0].to: not sticky across subsets: the split is "
        "chosen before the hash"
    )
    unhashed = (
        "meshctl: warning: service/random: policy.lb: ring_hash without policy.hash: each call "
        "hashes at random and spreads like round robin"
    )
    for words in (["validate", "-f", str(tmp_path)], ["apply", "-f", str(tmp_path)]):
        result = run_cli("control.meshctl", "--control", control, *words)
        assert result.returncode == 0, result.stdout + result.stderr
        warnings = result.stderr.splitlines()
        assert [w.startswith(split) for w in warnings] == [True, False], warnings
        assert warnings[1].startswith(unhashed), warnings

    shown = meshctl(control, "get", "svc", "carts").splitlines()
    assert shown[2:4] == ["", "hash: header x-user-id (ring 16-4096)"], shown
    shown = meshctl(control, "get", "svc", "random").splitlines()
    assert shown[2:] == [
        "",
        "hash: none (each call hashes at random, spreading like round robin)",
    ], shown
