"""``python -m bench`` runs end to end: a quick control section at N=1 and a quick agent
section, each as a subprocess whose last line is the JSON summary with every table's rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_bench_quick_control_prints_a_json_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "control", "--sizes", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert {"machine", "quick", "sizes", "seconds", "results"} <= set(summary)
    assert summary["quick"] is True and summary["sizes"] == [1]
    assert {"nproc", "cpu", "python", "grpcio"} <= set(summary["machine"])
    assert list(summary["results"]) == ["control"]

    rows = summary["results"]["control"]
    builds = [r for r in rows if r["table"].startswith("snapshot build")]
    assert [r["services"] for r in builds] == [1]
    assert {"median_ms", "p99_ms", "us_per_service"} <= set(builds[0])

    applies = [r for r in rows if r["table"].startswith("apply to call")]
    assert {(r["store"], r["debounce"]) for r in applies} == {
        ("memory", "100ms"),
        ("memory", "0s"),
        ("file", "100ms"),
    }
    for row in applies:
        assert row["services"] == 1 and row["flips"] == 3
        assert 0 < row["median_ms"] <= row["p99_ms"] < 30_000
    meshctl = [r for r in rows if r["table"].startswith("meshctl apply")]
    assert len(meshctl) == 1 and meshctl[0]["meshctl_wall_ms"] > 0
    compared = {r["compare"] for r in rows if r["table"].startswith("side by side")}
    assert compared == {"file / memory store, N=1", "debounce 100ms / 0s, N=1"}
    # Human-readable tables come before the JSON line.
    assert any(line.startswith("== control: apply to call") for line in lines)


def test_bench_quick_agent_prints_a_json_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "agent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["quick"] is True
    assert list(summary["results"]) == ["agent"]
    rows = summary["results"]["agent"]

    footprint = [r for r in rows if r["table"].startswith("footprint")]
    assert [r["variant"] for r in footprint] == ["no health checks", "health checks 5s"]
    for row in footprint:
        assert {
            "agent_rss_mib",
            "agent_rss_empty_mib",
            "agent_idle_cpu_pct",
            "control_rss_mib",
            "window_s",
            "local_pushes_in_window",
            "hold_all_ms",
        } <= set(row)
        assert 0 < row["agent_rss_mib"] < 1024 and 0 < row["control_rss_mib"] < 1024
        assert row["agent_idle_cpu_pct"] >= 0 and row["window_s"] > 0
    assert footprint[1]["health_checks_per_s"] == 40

    starts = [r for r in rows if r["table"].startswith("start to first LDS")]
    assert [r["start"].split(":")[0] for r in starts] == ["warm", "cold"]
    for row in starts:
        assert row["runs"] == 2
        assert 0 < row["median_ms"] <= row["p99_ms"] < 30_000

    pushes = [r for r in rows if r["table"].startswith("push to client")]
    assert [r["path"] for r in pushes][:3] == [
        "via agent holding echo only",
        "via agent holding 101 services",
        "direct to control",
    ]
    for row in pushes[:3]:
        assert row["pushes"] == 5 and 0 < row["median_ms"] <= row["p99_ms"] < 10_000

    compared = {r["compare"]: r for r in rows if r["table"].startswith("side by side")}
    assert set(compared) == {
        "start to first LDS, cold / warm",
        "push to client, via agent holding echo only / direct",
        "push to client, via agent holding 101 services / direct",
    }
    assert all(r["ratio"] > 0 for r in compared.values())
    assert any(line.startswith("== agent: footprint") for line in lines)
