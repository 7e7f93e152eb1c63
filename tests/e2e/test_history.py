"""Config history, diff, rollback and the audit trail, through real control servers and
``meshctl`` as an operator runs it: on one server; on two servers sharing one etcd, with a
rollback racing an apply; and refused writes in the log and in ``meshctl audit``. What each
store keeps is in the store contract (tests/e2e/test_store_contract.py)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Proc, run_cli, wait_for
from tests.e2e.conftest import EtcdServer, MeshProcesses
from tests.e2e.helpers import Pki, meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def orders(path: Path, timeout: str, *addresses: str) -> Path:
    lines = ["name: orders", "endpoints:"]
    lines += [f"  - address: {a}" for a in addresses or ("10.0.0.5:50051",)]
    lines += ["policy:", f"  timeout: {timeout}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def as_json(control: str, *args: str) -> Any:
    return json.loads(meshctl(control, *args, "-o", "json"))


def live(control: str) -> dict[str, Any]:
    [stored] = as_json(control, "get", "service", "orders")["services"]
    return dict(stored)


def test_history_diff_and_rollback_of_a_deleted_service(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    _, control = procs.start_control()
    path = orders(tmp_path / "orders.yaml", "2s")
    meshctl(control, "apply", "-f", str(path), "-m", "first")
    r1 = live(control)["revision"]

    # diff -f: what applying the file would change, and nothing is written
    orders(path, "3s", "10.0.0.5:50051", "10.0.0.6:50051")
    text = meshctl(control, "diff", "-f", str(path))
    assert "policy.timeout: 2s -> 3s" in text, text
    assert "endpoints[10.0.0.6:50051].address: (none) -> 10.0.0.6:50051" in text, text
    assert live(control)["revision"] == r1
    [planned] = as_json(control, "diff", "-f", str(path))
    assert {"path": "policy.timeout", "from": "2s", "to": "3s"} in planned["changes"]

    meshctl(control, "apply", "-f", str(path), "-m", "raise timeout")
    r2 = live(control)["revision"]
    meshctl(control, "delete", "service", "orders", "-m", "oops")

    table = meshctl(control, "history", "orders").splitlines()
    assert table[0].split() == ["REVISION", "TIME", "WHO", "ACTION", "MESSAGE", "CHANGE"]
    assert "anonymous" in table[1] and "first" in table[1] and table[1].endswith("created")
    assert table[2].endswith("2 changes: endpoints[10.0.0.6:50051].address, policy.timeout")
    assert "delete" in table[3] and "oops" in table[3] and table[3].endswith("deleted")
    history = as_json(control, "history", "orders")["history"]
    assert [(h["revision"], h["action"], h["message"]) for h in history] == [
        (r1, "apply", "first"),
        (r2, "apply", "raise timeout"),
        (r2 + 1, "delete", "oops"),
    ]

    between = as_json(control, "diff", "orders", "--from", str(r1), "--to", str(r2))
    assert between["from"]["revision"] == r1 and between["to"]["revision"] == r2
    assert {"path": "policy.timeout", "from": "2s", "to": "3s"} in between["changes"]

    # A deleted service comes back; the rollback is a new revision
    out = meshctl(control, "rollback", "orders", "--to", str(r1), "-m", "back to 2s")
    assert out.strip() == f"service/orders rolled back to revision {r1} (revision {r2 + 2})"
    back = live(control)
    assert back["revision"] == r2 + 2 and back["service"]["policy"]["timeout"] == "2s"
    last = as_json(control, "history", "orders")["history"][-1]
    assert (last["action"], last["rollback_of"], last["message"]) == ("rollback", r1, "back to 2s")
    # default diff: the version before the live one, to the live one
    text = meshctl(control, "diff", "orders")
    assert f"+++ service/orders live (revision {r2 + 2})" in text
    assert "policy.timeout: (none) -> 2s" in text

    # Bad input names what is wrong and changes nothing
    for args, expected in [
        (("rollback", "orders", "--to", "999"), "has no revision 999 in its history"),
        (("rollback", "orders", "--to", str(r2 + 1)), "is its deletion"),
        (("diff", "orders", "--from", "999"), "--from 999: service 'orders' has no revision"),
        (("history", "nothing"), "service 'nothing' has no history"),
        (("audit", "--since", "an hour"), "invalid period 'an hour'"),
    ]:
        result = run_cli("control.meshctl", "--control", control, *args)
        assert result.returncode != 0 and expected in result.stderr, (args, result.stderr)
    assert live(control)["revision"] == r2 + 2


def _control_json_lines(proc: Proc) -> list[dict[str, Any]]:
    out = []
    for line in (proc.output() + proc.errors()).splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


@pytest.mark.timeout(120)
def test_two_servers_on_one_etcd_rollback_races_an_apply(
    procs: MeshProcesses, etcd: EtcdServer, tmp_path: Path
) -> None:
    store = etcd.url("/mesh")
    _, a = procs.start_control(store=store, name="control-a")
    _, b = procs.start_control(store=store, name="control-b")
    meshctl(a, "apply", "-f", str(orders(tmp_path / "v1.yaml", "2s")), "-m", "v1")
    first = live(a)["revision"]
    outcomes = []
    for round_ in range(2):
        path = orders(tmp_path / f"next-{round_}.yaml", f"{5 + round_}s")
        meshctl(b, "apply", "-f", str(path), "-m", f"next {round_}")  # through the other server
        current = live(a)["revision"]
        assert live(b)["revision"] == current
        racing = orders(tmp_path / f"race-{round_}.yaml", f"{10 + round_}s")
        rollback = ("--control", a, "rollback", "orders", "--to", str(first))
        apply = ("--control", b, "apply", "-f", str(racing), "-m", f"race {round_}")
        with ThreadPoolExecutor(2) as pool:
            both = [
                pool.submit(run_cli, "control.meshctl", *args, "--if-revision", str(current))
                for args in (rollback, apply)
            ]
            done, lost = (f.result() for f in both)
        codes = sorted([done.returncode == 0, lost.returncode == 0])
        assert codes == [False, True], (done.stdout + done.stderr, lost.stdout + lost.stderr)
        loser = done if done.returncode else lost
        assert "aborted: service 'orders' changed at revision" in loser.stderr, loser.stderr
        assert f"after revision {current}" in loser.stderr
        winner = "rollback" if done.returncode == 0 else "apply"
        outcomes.append(winner)

        # Both servers show the same history: the winner's write, nothing of the loser's
        history_a = as_json(a, "history", "orders")["history"]
        assert as_json(b, "history", "orders")["history"] == history_a
        newest = history_a[-1]
        assert history_a[-2]["revision"] == current
        assert newest["action"] == winner and newest["revision"] == live(a)["revision"]
        expected_timeout = "2s" if winner == "rollback" else f"{10 + round_}s"
        assert newest["service"]["policy"]["timeout"] == expected_timeout
        assert live(b)["service"]["policy"]["timeout"] == expected_timeout

    # Every write kept, oldest first, the same on both; the audit has both sides of each race
    history = as_json(b, "history", "orders")["history"]
    assert len(history) == 1 + 2 * 2
    assert [h["revision"] for h in history] == sorted({h["revision"] for h in history})
    assert [h["action"] for h in history[2::2]] == outcomes
    audit_a = as_json(a, "audit", "--service", "orders")["audit"]
    assert as_json(b, "audit", "--service", "orders")["audit"] == audit_a
    races = [e for e in audit_a if e["action"] == "rollback" or "race" in e["message"]]
    assert len(races) == 4
    assert sorted(e["outcome"] for e in races) == ["ok"] * 2 + ["refused"] * 2
    assert {e["reason"] for e in races if e["outcome"] == "refused"} == {"conflict"}
    assert len({e["server_id"] for e in audit_a}) == 2  # the writes of both servers


def test_refused_writes_are_audited_and_change_nothing(
    procs: MeshProcesses, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-value")
    proc, control = procs.start_control("--operator-token-file", str(token))
    path = orders(tmp_path / "orders.yaml", "2s")

    refused = run_cli("control.meshctl", "--control", control, "apply", "-f", str(path))
    assert refused.returncode != 0 and "needs an operator" in refused.stderr
    with_token = ("--control", control, "--token-file", str(token))
    ok = run_cli("control.meshctl", *with_token, "apply", "-f", str(path), "-m", "by token")
    assert ok.returncode == 0, ok.stderr
    revision = live(control)["revision"]
    unknown = ("rollback", "orders", "--to", "999", "-m", "undo")
    missing = run_cli("control.meshctl", *with_token, *unknown)
    assert missing.returncode != 0 and "has no revision 999" in missing.stderr

    # The log: one "admin write" line per write, done or refused
    def lines() -> list[dict[str, Any]] | None:
        found = [x for x in _control_json_lines(proc) if x.get("event") == "admin write"]
        return found if len(found) == 3 else None

    denied, applied, failed = wait_for(lines, 10, "three 'admin write' log lines")
    assert (denied["outcome"], denied["reason"], denied["who"]) == (
        "refused",
        "permission denied",
        "anonymous",
    )
    assert denied["peer"].startswith("ipv4:127.0.0.1:") and denied["services"] == ["orders"]
    assert (applied["outcome"], applied["who"], applied["message"]) == ("ok", "token", "by token")
    assert (failed["outcome"], failed["reason"], failed["who"]) == ("refused", "not found", "token")
    assert "has no revision 999" in failed["detail"] and failed["message"] == "undo"
    assert failed["action"] == "rollback"

    # meshctl audit: the same, from the store, filtered
    audit = as_json(control, "audit", "--since", "1h")["audit"]
    assert [(e["outcome"], e["reason"], e["who"]) for e in audit] == [
        ("refused", "permission denied", "anonymous"),
        ("ok", None, "token"),
        ("refused", "not found", "token"),
    ]
    assert as_json(control, "audit", "--service", "billing")["audit"] == []
    table = meshctl(control, "audit").splitlines()
    assert table[0].split() == ["TIME", "WHO", "PEER", "ACTION", "SERVICES", "OUTCOME", "DETAIL"]
    assert "refused  permission denied: apply needs an operator" in table[1]
    # nothing secret anywhere
    assert "s3cret" not in proc.output() + proc.errors() + json.dumps(audit)

    # the refused writes changed nothing: one version, the one applied
    [entry] = as_json(control, "history", "orders")["history"]
    assert (entry["who"], entry["message"]) == ("token", "by token")
    assert live(control)["revision"] == revision


def test_who_is_the_certificate_identity_with_mtls(procs: MeshProcesses, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    _, control = procs.start_control(tls_dir=pki.issue("server", server="127.0.0.1"))
    alice = ("--control", control, *Pki.flags(pki.issue("alice", operator="alice")))
    node = ("--control", control, *Pki.flags(pki.issue("n1", node="n1")))
    path = orders(tmp_path / "orders.yaml", "2s")
    done = run_cli("control.meshctl", *alice, "apply", "-f", str(path), "-m", "by alice")
    assert done.returncode == 0, done.stderr
    refused = run_cli("control.meshctl", *node, "delete", "service", "orders")
    assert refused.returncode != 0 and "needs an operator" in refused.stderr
    history = json.loads(
        run_cli("control.meshctl", *node, "history", "orders", "-o", "json").stdout
    )
    assert [h["who"] for h in history["history"]] == ["spiffe://mesh.test/operator/alice"]
    audit = json.loads(run_cli("control.meshctl", *alice, "audit", "-o", "json").stdout)["audit"]
    assert [(e["who"], e["action"], e["outcome"]) for e in audit] == [
        ("spiffe://mesh.test/operator/alice", "apply", "ok"),
        ("spiffe://mesh.test/node/n1", "delete", "refused"),
    ]
