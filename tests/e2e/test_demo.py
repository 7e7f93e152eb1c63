"""``make demo`` runs its script end to end and shows the mesh reacting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_demo_shows_the_mesh_working(tmp_path: Path) -> None:
    result = run_cli(
        "mesh_demo", "--once", "--pause", "2", "--workdir", str(tmp_path / "demo"), timeout=80
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"\[client\] call +\d+ +ok +alpha", out), out
    assert re.search(r"\[client\] call +\d+ +ok +beta", out), out
    assert "store problem:" in out and "endpoints[0].address" in out
    after_delete = out.split("deleting the service", 1)[1]
    assert "FAIL  UNAVAILABLE" in after_delete
    after_reapply = after_delete.split("applying it again", 1)[1]
    assert re.search(r"\[client\] call +\d+ +ok", after_reapply), after_reapply
