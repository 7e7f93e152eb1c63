"""``make demo`` runs its script end to end and shows the mesh reacting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def section(out: str, start: str, end: str) -> str:
    return out.split(start, 1)[1].split(end, 1)[0]


def test_demo_shows_the_mesh_working(tmp_path: Path) -> None:
    result = run_cli(
        "mesh_demo", "--once", "--pause", "2", "--workdir", str(tmp_path / "demo"), timeout=110
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"\[client\] call +\d+ +ok +alpha", out), out
    assert re.search(r"\[client\] call +\d+ +ok +beta", out), out

    unhealthy = section(out, "alpha reports NOT_SERVING", "alpha is healthy again")
    assert re.search(r"agent: endpoint echo/\S+ is unhealthy", unhealthy), unhealthy
    tail = unhealthy.split("agent: endpoint")[0].splitlines()[-4:]
    assert all(" beta " in line for line in tail if "[client]" in line), tail

    tripped = section(out, "both backends fail", "the backends recover")
    assert "circuit for service 'echo' is open until" in tripped, tripped
    recovered = section(out, "the backends recover", "control server dies")
    assert re.search(r"\[client\] call +\d+ +ok", recovered), recovered

    outage = section(out, "control server dies", "control server comes back")
    assert "[client]" in outage and "FAIL" not in outage, outage

    assert "store problem:" in out and "endpoints[0].address" in out
    after_delete = out.split("deleting the service", 1)[1]
    assert "FAIL  UNAVAILABLE" in after_delete
    after_reapply = after_delete.split("applying it again", 1)[1]
    assert re.search(r"\[client\] call +\d+ +ok", after_reapply), after_reapply
