"""Authorization between services with real processes: service ``web`` (strict) with rules,
its servers from ``mesh_server`` (grpc's RBAC filters on the Listener the agent builds) and
``aio_mesh_server`` (the interceptor), and callers holding different identities, each in its
own process (:mod:`tests.e2e.mtls_peer`). The same table of cases runs through both servers,
which must give the same answers.

The tests share one mesh (``mesh``): each applies its own rules first, starts its own servers
and callers (stopped at its end) and has its servers' registrations removed at its end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.commands import Commands
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, log_lines
from tests.e2e.test_mtls import TD, Mesh, first_ok

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

IDENTITIES = """\
---
name: client
endpoints: []
security: {hosts: ['node-*']}
---
name: other
endpoints: []
security: {hosts: ['node-*']}
---
name: third
endpoints: []
security: {hosts: ['node-*']}
"""
WEB = """\
name: web
endpoints: []
security:
  hosts: ['node-*']
  mode: strict
  authorization:
    - {name: no-test-admin, action: deny, methods: [/test.v1.Peer/Admin],
       headers: {x-env: {exact: test}}}
    - {name: client-all, action: allow, callers: [client]}
    - {name: %(other_rule)s, action: allow, callers: [other], methods: [%(other_methods)s]}
"""
RULES = {"other_rule": "other-who", "other_methods": "/test.v1.Peer/Who"}
# (caller identity, method, metadata, expected code)
CASES = [
    ("client", "Who", [], "OK"),
    ("client", "Admin", [], "OK"),
    ("client", "Admin", [["x-env", "test"]], "PERMISSION_DENIED"),
    ("client", "Admin", [["x-env", "prod"]], "OK"),
    ("other", "Who", [], "OK"),
    ("other", "Admin", [], "PERMISSION_DENIED"),
    ("third", "Who", [], "PERMISSION_DENIED"),
]


@pytest.fixture(scope="module")
def module_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    procs = MeshProcesses(tmp_path_factory.mktemp("authorization-mesh"))
    try:
        yield Mesh(procs, procs.workdir)
    finally:
        procs.stop_all()


@pytest.fixture
def mesh(module_mesh: Mesh, procs: MeshProcesses, tmp_path: Path) -> Iterator[Mesh]:
    view = module_mesh.for_test(procs, tmp_path)
    yield view
    view.deregister_servers()


def services(**rules: str) -> str:
    return WEB % {**RULES, **rules} + IDENTITIES


def callers(mesh: Mesh) -> dict[str, Commands]:
    return {name: mesh.caller("--identity", name) for name in ("client", "other", "third")}


def answers(who: dict[str, Commands]) -> list[str]:
    out = []
    for caller, method, metadata, _ in CASES:
        command = {"call": "web", "method": method, "metadata": metadata}
        out.append(who[caller].run(command, 15, f"{caller} calling {method}")["code"])
    return out


def test_sync_and_asyncio_servers_give_the_same_answers(mesh: Mesh) -> None:
    mesh.apply(services())
    sync_proc, _ = mesh.server("web", "sync")
    who = callers(mesh)
    first_ok(who["client"])
    expected = [code for *_, code in CASES]
    assert answers(who) == expected
    sync_proc.stop()
    # The same callers, now served by an asyncio server on the endpoint list.
    aio_proc, _ = mesh.server("web", "aio")
    wait_for(
        lambda: who["client"].run({"call": "web"}, 15, "a call")["code"] == "OK",
        40,
        "the asyncio server to answer",
        every=0.2,
    )
    assert answers(who) == expected
    denied = [e for e in log_lines(aio_proc) if e.get("event") == "call denied"]
    assert {(e["method"], e["rule"]) for e in denied} == {
        ("/test.v1.Peer/Admin", "no-test-admin"),
        ("/test.v1.Peer/Admin", "no allow rule matched"),
        ("/test.v1.Peer/Who", "no allow rule matched"),
    }
    assert {e["caller"] for e in denied} == {
        f"spiffe://{TD}/service/{name}" for name in ("client", "other", "third")
    }
    # The sync server's denials went through gRPC's RBAC audit logger (its stdout), with the
    # same callers, methods and rules ("" when no allow rule matched).
    audits = [json.loads(line)["grpc_audit_log"] for line in sync_proc.lines()]
    assert all(not a["authorized"] for a in audits), audits
    assert {
        (a["rpc_method"], a["matched_rule"] or "no allow rule matched", a["principal"])
        for a in audits
    } == {(e["method"], e["rule"], e["caller"]) for e in denied}


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_a_rule_change_applies_to_running_servers_under_traffic(mesh: Mesh, flavour: str) -> None:
    mesh.apply(services())
    mesh.server("web", flavour)
    who = callers(mesh)
    first_ok(who["client"])
    assert who["other"].run({"call": "web"}, 15, "other calling Who")["code"] == "OK"
    who["client"].run({"start": "web", "fresh": 0.5}, 10, "client's call loop")
    # other loses Who (its rule now names Admin only); client's calls go on, never failing.
    mesh.apply(services(other_rule="other-admin", other_methods="/test.v1.Peer/Admin"))
    wait_for(
        lambda: (
            who["other"].run({"call": "web"}, 15, "other calling Who")["code"]
            == "PERMISSION_DENIED"
        ),
        30,
        "the new rule to reach the server",
        every=0.2,
    )
    assert who["other"].run({"call": "web", "method": "Admin"}, 15, "other: Admin")["code"] == "OK"
    result = who["client"].run({"stop": True}, 20, "the loop's counts")
    assert result["failures"] == [] and result["ok"] > 20, result


def test_a_denied_call_does_not_open_the_caller_s_breaker(mesh: Mesh) -> None:
    text = services().replace(
        "security:\n  hosts: ['node-*']\n  mode: strict",
        # Even with PERMISSION_DENIED named a failure, a denial is never reported.
        "policy: {circuit_breaker: {consecutive_failures: 3, open_for: 30s,\n"
        "  failure_codes: [UNAVAILABLE, PERMISSION_DENIED]}}\n"
        "security:\n  hosts: ['node-*']\n  mode: strict",
        1,
    )
    mesh.apply(text)
    mesh.server("web", "sync")
    who = callers(mesh)
    wait_for(
        lambda: (
            who["third"].run({"call": "web"}, 15, "third calling")["code"] == "PERMISSION_DENIED"
        ),
        40,
        "the server to deny third",
        every=0.2,
    )
    for _ in range(10):
        assert who["third"].run({"call": "web"}, 15, "third calling")["code"] == "PERMISSION_DENIED"
    breakers = {b.service: b for b in agent_status(mesh.agent).breakers}
    assert breakers["web"].enabled and breakers["web"].state == 1, breakers  # CLOSED
    assert first_ok(who["client"])["server"] == "web"
