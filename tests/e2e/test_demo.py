"""``make demo`` runs its script end to end and shows the mesh reacting."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(160)]

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"
AGENT = rf"\[agent\]  {CLOCK}  "


def section(out: str, start: str, end: str) -> str:
    return out.split(start, 1)[1].split(end, 1)[0]


def client_calls(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[client] ")]


def test_demo_shows_the_mesh_working(tmp_path: Path) -> None:
    # Through make, as the README says, with the demo's options passed in ARGS. --pause 0:
    # each step still waits until it has shown what it is about, but lingers no longer.
    result = subprocess.run(
        ["make", "-s", "demo", f"ARGS=--once --pause 0 --workdir {tmp_path / 'demo'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    # mTLS on: the node's certificate names it, and meshctl writes as an operator.
    assert "SANs: URI:spiffe://demo.mesh/node/demo-node, IP:127.0.0.1" in out, out
    assert "service/echo configured (revision 1)" in out, out
    assert re.search(r"^the mesh's web page: http://127\.0\.0\.1:\d+/ ", out, re.M), out
    ok_line = rf"\[client\] {CLOCK}  call +\d+  ok    %s +\d+\.\d\d ms"
    assert re.search(ok_line % "alpha", out), out
    assert re.search(ok_line % "beta", out), out
    calls = client_calls(out)
    assert calls and all(re.match(rf"\[client\] {CLOCK}  call +\d+  (ok|FAIL) ", c) for c in calls)
    found = re.search(r"backends: alpha on (\S+), beta on (\S+)", out)
    assert found, out
    alpha, beta = found.groups()

    unhealthy = section(out, "alpha reports NOT_SERVING", "alpha is healthy again")
    assert re.search(
        AGENT + re.escape(f"endpoint echo {alpha}: healthy -> unhealthy (NOT_SERVING)"), unhealthy
    ), unhealthy
    assert re.search(r"agent: endpoint echo/\S+ is unhealthy", unhealthy), unhealthy
    tail = client_calls(unhealthy.split("agent: endpoint")[0])[-4:]
    assert tail and all(" beta " in line for line in tail), tail

    stopped = section(out, "beta is stopped (SIGTERM)", "beta starts again")
    down = re.search(AGENT + re.escape(f"endpoint echo {beta}: healthy -> unhealthy ("), stopped)
    assert down, stopped
    tail = client_calls(stopped[down.end() :])[-4:]
    assert tail and all(" ok    alpha " in line for line in tail), tail
    restarted = section(out, f"beta starts again on {beta}", "both backends fail")
    up = re.search(
        AGENT + re.escape(f"endpoint echo {beta}: unhealthy -> healthy (SERVING)"), restarted
    )
    assert up, restarted
    assert re.search(ok_line % "beta", restarted[up.end() :]), restarted

    tripped = section(out, "both backends fail", "control server dies")
    opened = re.search(
        AGENT + rf"breaker echo: closed -> open \(consecutive failures\), open until ({CLOCK})",
        tripped,
    )
    assert opened, tripped
    fast_fail = rf"\[client\] {CLOCK}  call +\d+  FAIL  UNAVAILABLE: circuit open \(fail fast\)"
    assert re.search(fast_fail + re.escape(f", open until {opened[1]}"), tripped), tripped
    closed = re.search(
        AGENT + r"breaker echo: half-open -> closed \(probes succeeded\)", tripped[opened.end() :]
    )
    assert closed, tripped
    recovered = section(out, "the backends recover", "control server dies")
    assert re.search(ok_line % r"\S+", recovered), recovered

    outage = section(out, "control server dies", "control server comes back")
    assert "[client]" in outage and "FAIL" not in outage, outage
    # The agent says it lost mesh-control as it happens, once, not at every retry.
    lost = re.findall(AGENT + r"(lost|cannot reach) mesh-control at \S+", outage)
    assert lost and len(lost) <= 2, outage
    back = section(out, "control server comes back", "a broken hand edit")
    assert re.search(AGENT + r"reconnected to mesh-control at \S+ \((delta|sotw) xDS\)", back), back

    broken = section(out, "a broken hand edit", "the operator puts the good file back")
    assert "store problem:" in broken and "endpoints[0].address" in broken, broken
    cleared = section(out, "the operator puts the good file back", "deleting the service")
    assert "$ meshctl status" in cleared and "store problem:" not in cleared, cleared
    assert "on the latest config" in cleared, cleared
    after_delete = out.split("deleting the service", 1)[1]
    assert re.search(rf"\[client\] {CLOCK}  call +\d+  FAIL  UNAVAILABLE: ", after_delete)
    after_reapply = after_delete.split("applying it again", 1)[1]
    assert re.search(ok_line % r"\S+", after_reapply), after_reapply
    assert "\n[agent]" not in out.split("==> stopping", 1)[1]

    # The canary: each step's 200 calls, from a fresh client, split by the step's weights.
    canary = section(out, "==> a canary: v1 runs on alpha and beta, v2 on", "==> zones:")
    steps = re.findall(
        r"^canary (\d+)/(\d+): v1 (\d+), v2 (\d+) of 200 calls(?:, (\d+) failed)?$",
        canary,
        re.MULTILINE,
    )
    assert [(v1, v2) for v1, v2, *_ in steps] == [("90", "10"), ("50", "50"), ("0", "100")], canary
    counts = {int(v1): (int(n1), int(n2), int(failed or 0)) for v1, _, n1, n2, failed in steps}
    assert all(failed <= 10 for _, _, failed in counts.values()), canary
    # Loose binomial bounds: a count outside one has odds below one in a million.
    assert counts[90][0] >= 140 and 3 <= counts[90][1] <= 50, canary
    assert 60 <= counts[50][0] <= 140 and 60 <= counts[50][1] <= 140, canary
    assert counts[0][0] == 0 and counts[0][1] >= 190, canary
    assert "==> shifting the canary's split to v1 50%, v2 50%" in canary, canary
    # The demo's own client moved too: after the last step it calls v2 (gamma) alone.
    last = client_calls(canary.split("canary 0/100", 1)[1])
    assert last and all(" ok    gamma " in line for line in last), last

    # The zones: eu-1a's calls stay there, fail over to eu-1b's gamma and come back.
    zones = section(out, "==> zones: the node is in eu-1a", "==> stopping")
    steps = re.findall(
        r"^zones, eu-1a (\w+) \((.*)\): alpha (\d+), beta (\d+), gamma (\d+) of 100 calls$",
        zones,
        re.MULTILINE,
    )
    assert [(step, served) for step, served, *_ in steps] == [
        ("up", "eu-1a=0 eu-1b=1"),
        ("down", "eu-1a=0 eu-1b=0"),
        ("back", "eu-1a=0 eu-1b=1"),
    ], zones
    by_step = {step: (int(a), int(b), int(g)) for step, _, a, b, g in steps}
    assert by_step["up"][2] == 0 and by_step["back"][2] == 0, zones
    assert by_step["down"] == (0, 0, 100), zones
    assert "demo-node  eu-1a  echo     eu-1a=0 eu-1b=1" in zones, zones  # meshctl status, last

    # mTLS between services: the strict service's server takes the caller with an identity,
    # which it sees as teller, denies visitor (its rules), and refuses a plaintext call.
    secure = section(out, "==> mTLS between services", "==> stopping")
    assert "service/vault configured" in secure and "service/teller configured" in secure, secure
    assert (
        "vault: 20 of 20 calls over mTLS; the server saw the caller as "
        "spiffe://demo.mesh/service/teller\n" in secure
    ), secure
    assert "vault: a call from visitor: PERMISSION_DENIED (rule tellers-only)" in secure, secure
    assert "vault: a plaintext call: UNAVAILABLE" in secure, secure


def test_make_demo_passes_its_args_through() -> None:
    result = subprocess.run(
        ["make", "-n", "demo", "ARGS=--once --no-tls"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "-m mesh_demo --once --no-tls" in result.stdout, result.stdout
