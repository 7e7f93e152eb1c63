"""The agent's component framework: dependency order, failure isolation with restart and
backoff, bounded shutdown, and components injected through entry points."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mesh_agent.components import (
    AgentContext,
    ComponentGraphError,
    ComponentLookupError,
    Supervisor,
    load_components,
)
from mesh_core.backoff import Backoff
from mesh_core.errors import ComponentFatalError
from mesh_core.signals import Signal
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(10)

FAST = Backoff(base=0.005, cap=0.01, factor=2.0, jitter=0.0)

WAIT = 3.0  # seconds to wait for a state
POLL = 0.002  # fast enough not to miss a short-lived state


class Recorder:
    """A component that records its lifecycle in a shared list and can be told to fail."""

    def __init__(
        self,
        name: str,
        events: list[str],
        requires: tuple[str, ...] = (),
        *,
        start_failures: int = 0,
        run_failures: int = 0,
        run_for: float | None = None,
    ) -> None:
        self.name = name
        self.requires = requires
        self.events = events
        self.start_failures = start_failures
        self.run_failures = run_failures
        self.run_for = run_for
        self.ctx: AgentContext | None = None
        self.starts = 0

    async def start(self, ctx: AgentContext) -> None:
        self.starts += 1
        self.ctx = ctx
        if self.start_failures:
            self.start_failures -= 1
            self.events.append(f"{self.name}.start-failed")
            raise RuntimeError(f"{self.name} cannot start")
        self.events.append(f"{self.name}.start")

    async def run(self) -> None:
        self.events.append(f"{self.name}.run")
        if self.run_failures:
            self.run_failures -= 1
            if self.run_for:
                await asyncio.sleep(self.run_for)
            raise ValueError(f"{self.name} crashed")
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.events.append(f"{self.name}.stop")


def of(events: list[str], suffix: str) -> list[str]:
    return [e.rsplit(".", 1)[0] for e in events if e.endswith(f".{suffix}")]


def states(sup: Supervisor) -> dict[str, str]:
    return {s.name: s.state for s in sup.statuses()}


# --- order -------------------------------------------------------------------------------


async def test_start_in_dependency_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    changes: list[tuple[str, bool]] = []
    components = [
        Recorder("d", events, ("a",)),
        Recorder("c", events, ("b",)),
        Recorder("b", events, ("a",)),
        Recorder("a", events),
    ]
    sup = Supervisor(components, backoff=FAST, on_change=lambda n, s: changes.append((n, s)))
    assert sup.order == ("a", "b", "c", "d")  # ties (b, d) broken by name
    await sup.start()
    assert of(events, "start") == ["a", "b", "c", "d"]
    await eventually(
        lambda: len(of(events, "run")) == 4, WAIT, "four components running", every=POLL
    )
    assert states(sup) == dict.fromkeys("abcd", "running")
    assert changes == [(n, True) for n in "abcd"]

    events.clear()
    await sup.stop(timeout=1)
    assert events == ["d.stop", "c.stop", "b.stop", "a.stop"]
    assert states(sup) == dict.fromkeys("abcd", "stopped")
    assert changes[4:] == [(n, False) for n in "dcba"]


async def test_context_gives_declared_components_only() -> None:
    events: list[str] = []
    a, b, c = Recorder("a", events), Recorder("b", events, ("a",)), Recorder("c", events)
    sup = Supervisor([a, b, c], settings={"zone": "eu-1a"}, state_dir="/var/lib/mesh")
    await sup.start()
    try:
        assert b.ctx is not None
        assert b.ctx.get("a") is a
        assert b.ctx.require("a", Recorder) is a
        assert b.ctx.settings["zone"] == "eu-1a"
        assert b.ctx.state_dir == Path("/var/lib/mesh")
        with pytest.raises(ComponentLookupError, match=r"'b' asked for 'c'.*requires"):
            b.ctx.get("c")
        with pytest.raises(ComponentLookupError, match=r"'a' is a Recorder, not the int"):
            b.ctx.require("a", int)
        with pytest.raises(ComponentLookupError, match="not a known component"):
            sup.context.get("nope")
        assert sup.context.get("c") is c
    finally:
        await sup.stop(timeout=1)


def test_unknown_requirement_names_both() -> None:
    with pytest.raises(ComponentGraphError, match=r"'health' requires 'cache'.*not a known"):
        Supervisor([Recorder("health", [], ("cache",))])


def test_cycle_is_named() -> None:
    events: list[str] = []
    with pytest.raises(ComponentGraphError, match=r"cycle: a -> b -> c -> a"):
        Supervisor(
            [
                Recorder("a", events, ("b",)),
                Recorder("b", events, ("c",)),
                Recorder("c", events, ("a",)),
                Recorder("d", events, ("a",)),
            ]
        )
    with pytest.raises(ComponentGraphError, match=r"cycle: x -> x"):
        Supervisor([Recorder("x", events, ("x",))])


def test_duplicate_and_malformed_components() -> None:
    with pytest.raises(ComponentGraphError, match="two components are named 'a'"):
        Supervisor([Recorder("a", []), Recorder("a", [])])
    with pytest.raises(ComponentGraphError, match="'requires' must be a tuple"):
        Supervisor([Recorder("a", [], "b")])  # type: ignore[arg-type]


# --- failure isolation ---------------------------------------------------------------------


async def test_failing_start_is_restarted_with_backoff_while_others_run() -> None:
    events: list[str] = []
    changes: list[tuple[str, bool]] = []
    flaky = Recorder("flaky", events, start_failures=3)
    user = Recorder("user", events, ("flaky",))
    steady = Recorder("steady", events)
    sup = Supervisor(
        [flaky, user, steady],
        backoff=Backoff(base=0.05, cap=0.05, jitter=0.0),
        on_change=lambda n, s: changes.append((n, s)),
    )
    await sup.start()
    try:
        # The first failure does not hold back the others, dependents included.
        assert events[:3] == ["flaky.start-failed", "flaky.stop", "steady.start"]
        status = sup.status("flaky")
        assert status.state == "restarting"
        assert status.restarts == 1
        assert status.last_error == "RuntimeError('flaky cannot start')"
        await eventually(
            lambda: states(sup)["user"] == "running",
            WAIT,
            "user running",
            every=POLL,
        )
        assert states(sup)["steady"] == "running"

        await eventually(
            lambda: sup.status("flaky").state == "running",
            WAIT,
            "flaky running",
            every=POLL,
        )
        assert sup.status("flaky").restarts == 3
        assert of(events, "start-failed") == ["flaky"] * 3
        # stop() after every failed start, before the next attempt.
        flaky_events = [e for e in events if e.startswith("flaky.")]
        assert flaky_events == [
            "flaky.start-failed",
            "flaky.stop",
        ] * 3 + ["flaky.start", "flaky.run"]
        # The others were never disturbed.
        assert steady.starts == 1 and user.starts == 1
        assert "steady.stop" not in events and "user.stop" not in events
        assert [s for n, s in changes if n == "flaky"] == [False, False, False, True]
    finally:
        await sup.stop(timeout=1)


async def test_failing_run_is_restarted_and_dependents_keep_running() -> None:
    events: list[str] = []
    seen: list[str] = []
    base = Recorder("base", events, run_failures=1)
    dependent = Recorder("dependent", events, ("base",))
    sup = Supervisor(
        [base, dependent],
        backoff=Backoff(base=0.05, cap=0.05, jitter=0.0),
        on_change=lambda n, s: seen.append(f"{n}={s}:{sup.status(n).state}"),
    )
    await sup.start()
    try:
        await eventually(
            lambda: sup.status("base").state == "restarting",
            WAIT,
            "base restarting",
            every=POLL,
        )
        assert sup.status("base").last_error == "ValueError('base crashed')"
        assert sup.status("dependent").state == "running"
        await eventually(
            lambda: sup.status("base").state == "running",
            WAIT,
            "base running again",
            every=POLL,
        )
        assert sup.status("base").restarts == 1
        assert [e for e in events if e.startswith("base.")] == [
            "base.start",
            "base.run",
            "base.stop",
            "base.start",
            "base.run",
        ]
        assert dependent.starts == 1 and "dependent.stop" not in events
        assert [e for e in seen if e.startswith("base=")] == [
            "base=True:running",
            "base=False:failed",
            "base=True:running",
        ]
    finally:
        await sup.stop(timeout=1)


async def test_on_change_false_then_true() -> None:
    changes: list[tuple[str, bool]] = []
    sup = Supervisor(
        [Recorder("x", [], start_failures=1)],
        backoff=FAST,
        on_change=lambda n, s: changes.append((n, s)),
    )
    await sup.start()
    await eventually(
        lambda: sup.status("x").state == "running",
        WAIT,
        "x running",
        every=POLL,
    )
    assert changes == [("x", False), ("x", True)]
    await sup.stop(timeout=1)
    assert changes[-1] == ("x", False)


async def test_backoff_grows_then_resets_after_healthy_run() -> None:
    # Without a reset the delays would be 0.01, 0.2, 4, ...: the fourth restart would need
    # seconds. Each run lasts longer than reset_after, so every restart uses the first delay.
    events: list[str] = []
    comp = Recorder("c", events, run_failures=4, run_for=0.03)
    sup = Supervisor(
        [comp], backoff=Backoff(base=0.01, cap=10.0, factor=20.0, jitter=0.0), reset_after=0.02
    )
    began = time.monotonic()
    await sup.start()
    try:
        await eventually(
            lambda: sup.status("c").restarts == 4 and comp.run_failures == 0,
            WAIT,
            "c restarted 4 times and running",
            every=POLL,
        )
        assert time.monotonic() - began < 1.5
    finally:
        await sup.stop(timeout=1)

    # Failing straight away (no healthy run), the delay grows.
    events.clear()
    comp = Recorder("c", events, start_failures=3)
    sup = Supervisor([comp], backoff=Backoff(base=0.01, cap=10.0, factor=20.0, jitter=0.0))
    await sup.start()
    try:
        await asyncio.sleep(0.5)
        # Delays 0.01 s, 0.2 s, then 4 s: the third restart is still waiting.
        assert sup.status("c").restarts == 3
        assert sup.status("c").state == "restarting"
        assert comp.starts == 3
    finally:
        await sup.stop(timeout=1)
    assert states(sup) == {"c": "stopped"}


async def test_start_that_hangs_times_out_and_is_retried() -> None:
    class SlowOnce(Recorder):
        async def start(self, ctx: AgentContext) -> None:
            if self.starts == 0:
                self.starts += 1
                await asyncio.Event().wait()
            await super().start(ctx)

    events: list[str] = []
    sup = Supervisor([SlowOnce("slow", events)], backoff=FAST, start_timeout=0.05)
    await sup.start()
    try:
        await eventually(
            lambda: sup.status("slow").state == "running",
            WAIT,
            "slow running",
            every=POLL,
        )
        assert sup.status("slow").last_error == "TimeoutError()"
        assert events[0] == "slow.stop"  # released after the timed-out start
    finally:
        await sup.stop(timeout=1)


# --- shutdown ------------------------------------------------------------------------------


async def test_stop_is_bounded_when_a_component_hangs_or_raises() -> None:
    events: list[str] = []

    class HangsInStop(Recorder):
        async def stop(self) -> None:
            events.append(f"{self.name}.stop")
            await asyncio.Event().wait()

    class RaisesInStop(Recorder):
        async def stop(self) -> None:
            events.append(f"{self.name}.stop")
            raise OSError("disk gone")

    class IgnoresCancel(Recorder):
        async def run(self) -> None:
            events.append(f"{self.name}.run")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                events.append(f"{self.name}.ignored-cancel")  # once; a second cancel ends it
            await asyncio.Event().wait()

    sup = Supervisor(
        [
            Recorder("a", events),
            HangsInStop("b", events, ("a",)),
            RaisesInStop("c", events, ("b",)),
            IgnoresCancel("d", events, ("c",)),
        ],
        backoff=FAST,
    )
    await sup.start()
    await eventually(
        lambda: len(of(events, "run")) == 4, WAIT, "four components running", every=POLL
    )
    began = time.monotonic()
    with capture_logs() as logs:
        await sup.stop(timeout=0.1)
    assert time.monotonic() - began < 1.0
    assert of(events, "stop") == ["d", "c", "b", "a"]
    assert states(sup) == dict.fromkeys("abcd", "stopped")
    messages = {entry["event"] for entry in logs}
    assert "component stop() timed out" in messages
    assert "component stop() raised; ignored" in messages
    assert "component did not finish after cancellation" in messages
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "component:d")
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.cancelled()
    with pytest.raises(RuntimeError, match="already started"):
        await sup.start()


async def test_stop_during_backoff_and_context_manager() -> None:
    events: list[str] = []
    sup = Supervisor(
        [Recorder("x", events, start_failures=100)], backoff=Backoff(base=5, cap=5, jitter=0)
    )
    async with sup:
        assert sup.status("x").state == "restarting"
    assert sup.status("x").state == "stopped"
    assert events == ["x.start-failed", "x.stop"]  # not stopped twice


async def test_run_that_returns_stays_up_until_shutdown() -> None:
    events: list[str] = []

    class OneShot(Recorder):
        async def run(self) -> None:
            events.append("oneshot.run")

    sup = Supervisor([OneShot("oneshot", events)], backoff=FAST)
    await sup.start()
    await eventually(lambda: "oneshot.run" in events, WAIT, "oneshot to run", every=POLL)
    await asyncio.sleep(0.02)
    assert sup.status("oneshot").state == "running"
    assert sup.status("oneshot").restarts == 0
    await sup.stop(timeout=1)
    assert events[-1] == "oneshot.stop"


# --- entry points --------------------------------------------------------------------------

_counter = itertools.count()

PLUGIN_SOURCE = """
import asyncio

EVENTS = []


class Extra:
    name = "extra"
    requires = ("core",)

    def __init__(self):
        self.events = EVENTS
        self.core = None

    async def start(self, ctx):
        self.core = ctx.get("core")
        self.events.append("extra.start")

    async def run(self):
        await asyncio.Event().wait()

    async def stop(self):
        self.events.append("extra.stop")


class ReplacementCore(Extra):
    name = "core"
    requires = ()

    async def start(self, ctx):
        self.events.append("replacement.start")


def make_extra():
    return Extra()


def explode():
    raise RuntimeError("factory exploded")


def give_none():
    return None


async def async_factory():
    return Extra()


not_a_component = 42
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, str]) -> Any:
    """Writes a fake installed distribution ``testcomp`` whose entry points name objects in a
    module of its own (a fresh module name per test), and puts it on sys.path."""
    module = f"testcomp_plugin_{next(_counter)}"
    (tmp_path / f"{module}.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / "testcomp-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: testcomp\nVersion: 0.1\n")
    lines = [f"{name} = {target.replace('MOD', module)}" for name, target in entries.items()]
    (dist / "entry_points.txt").write_text("[mesh_agent.components]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return lambda: sys.modules[module]


async def test_entry_point_component_is_added_and_ordered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = install_plugin(tmp_path, monkeypatch, {"extra": "MOD:make_extra"})
    events: list[str] = []
    core, other = Recorder("core", events), Recorder("zzz", events)
    loaded = {c.name: c for c in load_components([core, other])}
    assert loaded["core"] is core and loaded["zzz"] is other
    extra = loaded["extra"]
    extra.events = events  # type: ignore[attr-defined]
    assert type(extra).__module__ == plugin().__name__

    mine = [c for c in loaded.values() if c.name in {"core", "zzz", "extra"}]
    sup = Supervisor(mine, backoff=FAST)
    await sup.start()
    assert of(events, "start") == ["core", "extra", "zzz"]
    assert extra.core is core  # type: ignore[attr-defined]
    await sup.stop(timeout=1)
    assert events.index("extra.stop") < events.index("core.stop")


async def test_entry_point_replaces_builtin_of_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, {"my-core": "MOD:ReplacementCore"})
    builtin = [Recorder("first", []), Recorder("core", []), Recorder("last", [])]
    with capture_logs() as logs:
        loaded = load_components(builtin)
    names = [c.name for c in loaded]
    assert names[:3] == ["first", "core", "last"]  # replaced in place
    assert loaded[1] is not builtin[1]
    assert type(loaded[1]).__name__ == "ReplacementCore"
    replaced = [e for e in logs if e["event"] == "built-in component replaced by entry point"]
    assert replaced and replaced[0]["component"] == "core"
    assert replaced[0]["distribution"] == "testcomp"


async def test_broken_entry_points_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(
        tmp_path,
        monkeypatch,
        {
            "good": "MOD:make_extra",
            "missing-module": "testcomp_no_such_module:factory",
            "missing-attr": "MOD:no_such_factory",
            "explodes": "MOD:explode",
            "gives-none": "MOD:give_none",
            "not-callable": "MOD:not_a_component",
            "async-factory": "MOD:async_factory",
        },
    )
    with capture_logs() as logs:
        loaded = load_components([Recorder("core", [])])
    assert [c.name for c in loaded if c.name in {"core", "extra"}] == ["core", "extra"]
    skipped = {e["entry_point"] for e in logs if e["log_level"] == "error"}
    assert {
        "missing-module",
        "missing-attr",
        "explodes",
        "gives-none",
        "not-callable",
        "async-factory",
    } <= skipped
    assert "good" not in skipped


async def test_a_running_component_can_say_it_is_degraded_and_recovered() -> None:
    events: list[str] = []
    upstream = Recorder("upstream", events)
    changes: list[tuple[str, bool]] = []
    supervisor = Supervisor(
        [upstream], backoff=FAST, on_change=lambda name, ok: changes.append((name, ok))
    )
    async with supervisor:
        assert upstream.ctx is not None
        assert changes == [("upstream", True)]
        upstream.ctx.degraded("10.0.0.2:15010: connection refused")
        state = supervisor.status("upstream")
        assert (state.state, state.last_error) == (
            "degraded",
            "10.0.0.2:15010: connection refused",
        )
        upstream.ctx.degraded("10.0.0.2:15010: connection refused")  # no news: not told again
        assert changes == [("upstream", True), ("upstream", False)]
        upstream.ctx.recovered()
        assert supervisor.status("upstream").state == "running"
        assert changes[-1] == ("upstream", True)
    # A context without a supervisor (a unit test of one component) takes it silently.
    AgentContext().degraded("anything")


# --- what the agent shares, and fatal failures ---------------------------------------------


async def test_context_shares_settings_statuses_and_changes() -> None:
    events: list[str] = []
    a, b = Recorder("a", events), Recorder("b", events, ("a",))
    sup = Supervisor([a, b], settings={"zone": "eu-1a", "port": 7}, backoff=FAST)
    heard: list[tuple[str, bool]] = []
    sup.context.component_changed.connect(lambda name, serving: heard.append((name, serving)))
    async with sup:
        assert b.ctx is not None
        assert b.ctx.setting("zone", str) == "eu-1a"
        with pytest.raises(ComponentLookupError, match=r"'port' is a int, not the str"):
            b.ctx.setting("port", str)
        with pytest.raises(ComponentLookupError, match=r"'b' asked for the setting 'nope'"):
            b.ctx.setting("nope", str)
        assert [(s.name, s.state) for s in b.ctx.statuses()] == [("a", "running"), ("b", "running")]
        assert heard == [("a", True), ("b", True)]
        b.ctx.degraded("no upstream")
        assert heard[-1] == ("b", False)
    assert heard[-2:] == [("b", False), ("a", False)]
    assert AgentContext().statuses() == []


async def test_connections_last_until_the_component_stops() -> None:
    signal: Signal[[str]] = Signal()
    heard: list[str] = []

    class Listener(Recorder):
        async def start(self, ctx: AgentContext) -> None:
            ctx.connect(signal, heard.append)
            await super().start(ctx)

    listener = Listener("listener", [], run_failures=1)
    sup = Supervisor([listener], backoff=Backoff(base=0.05, cap=0.05, jitter=0.0))
    await sup.start()
    try:
        await eventually(
            lambda: sup.status("listener").state == "restarting", WAIT, "a restart", every=POLL
        )
        signal.emit("while restarting")  # disconnected with the failed run
        await eventually(
            lambda: sup.status("listener").state == "running", WAIT, "running again", every=POLL
        )
        signal.emit("after the restart")  # connected again, once
    finally:
        await sup.stop(timeout=1)
    signal.emit("after the stop")
    assert heard == ["after the restart"]
    assert len(signal) == 0


async def test_a_fatal_start_stops_everything_and_is_raised() -> None:
    events: list[str] = []

    class CannotRun(Recorder):
        async def start(self, ctx: AgentContext) -> None:
            events.append(f"{self.name}.start")
            raise ComponentFatalError("the socket is taken") from OSError("EADDRINUSE")

    sup = Supervisor(
        [Recorder("a", events), CannotRun("b", events, ("a",)), Recorder("c", events, ("b",))],
        backoff=FAST,
    )
    with pytest.raises(ComponentFatalError, match="the socket is taken"):
        await sup.start()
    assert events == ["a.start", "a.run", "b.start", "b.stop", "a.stop"]  # c never started
    assert sup.status("b").restarts == 0
    assert {s.state for s in sup.statuses()} == {"stopped"}


async def test_a_fatal_failure_after_start_is_reported_not_retried() -> None:
    events: list[str] = []
    gate = asyncio.Event()

    class FailsLater(Recorder):
        async def run(self) -> None:
            await gate.wait()
            raise ComponentFatalError("cannot go on")

    sup = Supervisor([FailsLater("x", events), Recorder("y", events)], backoff=FAST)
    await sup.start()
    try:
        gate.set()
        error = await asyncio.wait_for(sup.failure(), 1)
        assert str(error) == "cannot go on"
        assert sup.status("x").state == "failed" and sup.status("x").restarts == 0
        assert sup.status("y").state == "running"
    finally:
        await sup.stop(timeout=1)
