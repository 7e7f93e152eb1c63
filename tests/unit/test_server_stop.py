"""A control server's stop is bounded: a task of its own that does not end when cancelled is
logged with where it is stuck and left behind, and stop returns (the CLI then exits anyway)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from control import server as server_module
from control.server import ControlServer
from tests.unit.test_aio import stubborn

pytestmark = pytest.mark.timeout(20)


async def test_stop_leaves_a_task_that_does_not_end_and_says_where_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "STOP_TIMEOUT", 0.2)
    server = ControlServer("memory:", "127.0.0.1:0", grace=0)
    await server.start()
    started, release = asyncio.Event(), asyncio.Event()
    stuck = asyncio.create_task(stubborn(started, release), name="stuck")
    server._tasks.append(stuck)
    await started.wait()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    try:
        with capture_logs() as logs:
            await server.stop()
        took = loop.time() - begun
        assert server.left_running == [stuck]
        assert took < 5, took
        [entry] = [e for e in logs if e["event"] == "task did not end when cancelled; leaving it"]
        assert entry["task"] == "stuck", entry
        assert any(line.endswith(" stubborn") for line in entry["waiting_in"]), entry
        assert any(e["event"] == "stopped, with tasks still running" for e in logs), logs
    finally:
        release.set()
        stuck.cancel()
        await asyncio.wait([stuck], timeout=1)


async def test_a_clean_stop_leaves_nothing_running() -> None:
    server = ControlServer("memory:", "127.0.0.1:0", grace=0)
    await server.start()
    await server.stop()
    assert server.left_running == []


def test_the_drain_grace_from_the_cli() -> None:
    from control.cli import build_parser

    assert build_parser().parse_args(["serve"]).drain_grace == server_module.DRAIN_GRACE
    assert build_parser().parse_args(["serve", "--drain-grace", "500ms"]).drain_grace == 0.5
    assert build_parser().parse_args(["serve", "--drain-grace", "0s"]).drain_grace == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--drain-grace", "-1s"])
