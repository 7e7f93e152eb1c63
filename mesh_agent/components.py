"""The node agent's parts as components, started, watched and stopped by one supervisor.

This is the seed's ServiceMesh core (``SEED-service-mesh-core.md``) with its known faults fixed
(DESIGN.md, decision 7):

* **Strict init order.** The seed wired its parts in one hand-written order. Here every
  component declares what it needs (``requires``); the :class:`Supervisor` derives the start
  order from that graph (a topological order, ties broken by name so it is deterministic) and
  stops in the reverse order. An unknown requirement, a cycle or a duplicate name is refused
  up front with an error naming the components involved.
* **No custom injection.** A component is built with no arguments and receives everything in
  ``start(ctx)`` from its :class:`AgentContext`: the other components it declared, by name and
  checked against the type it expects (``ctx.require("upstream", Upstream)``, a class or a
  runtime-checkable protocol), and what the agent shares with every component
  (``ctx.setting(key, kind)``, ``ctx.statuses()``, ``ctx.component_changed``). Users add
  components, or replace a built-in one by giving theirs the same name, through the
  ``mesh_agent.components`` entry point group (:func:`load_components`); since the others
  reach a component only through the context, a replacement is what they all get. A broken
  plug-in is logged and skipped; it never stops the agent.
* **No state persistence.** The context carries the agent's ``state_dir``; components keep
  what must survive a restart (last good config, breaker state) there.
* **Weak error propagation.** A component whose ``start()`` or ``run()`` raises is isolated:
  it is marked failed (its last error kept and logged with the traceback), stopped, and
  restarted with exponential backoff, forever, while every other component keeps running.
  Each change is reported through ``on_change(name, serving)`` and the
  :attr:`Supervisor.changed` signal (which components hear as ``ctx.component_changed``).
  The one exception is :class:`~mesh_core.errors.ComponentFatalError`: a component that
  cannot run as the agent was set up stops the agent instead (:meth:`Supervisor.start`
  raises it, or :meth:`Supervisor.failure` returns it).

No grpc import here: transport code only feeds and reads this module.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.machinery import PathFinder as _PathFinder
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, cast

import structlog

from mesh_core.backoff import Backoff
from mesh_core.errors import ComponentFatalError, ComponentGraphError, ComponentLookupError
from mesh_core.signals import Signal

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "mesh_agent.components"
DEFAULT_BACKOFF = Backoff(base=0.5, cap=30.0, factor=2.0, jitter=0.5)

State = Literal["starting", "running", "degraded", "failed", "restarting", "stopped"]
"""A component's state. ``degraded``: running, but not doing its job (the component said why
through :meth:`AgentContext.degraded`; the upstream, while no control server answers)."""
T = TypeVar("T")
P = ParamSpec("P")


class Component(Protocol):
    """One part of the agent.

    ``name`` is unique within the agent and is the name it has in health. ``requires`` names
    the components that must be started before this one; only those can be fetched from the
    context. (Both are read-only here, so a plain class attribute satisfies them.)

    ``start(ctx)`` sets up; raising means the start failed. ``run()`` is the main loop: it may
    run until cancelled, return at once when there is nothing to loop on (the component then
    stays running until shutdown) or raise, which means it failed. ``stop()`` releases what was
    set up; it must be safe to call after a failed or partial ``start()``. After a failure the
    supervisor calls ``stop()`` and later ``start()`` again on the same object.
    """

    @property
    def name(self) -> str: ...

    @property
    def requires(self) -> tuple[str, ...]: ...

    async def start(self, ctx: AgentContext) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ComponentState:
    """A snapshot of one component, as shown by health and ``meshctl status``."""

    name: str
    state: State
    last_error: str | None
    restarts: int


class AgentContext:
    """What a component receives in ``start()``: the agent's settings (and what else it shares
    with every component), its state directory, the other components by name, and the
    supervisor's view of them all.

    The supervisor gives each component its own view, limited to the names in its ``requires``,
    so that a dependency that was not declared (and so might not be started yet) is an error
    instead of a race. The same view is handed to every ``start()`` of a component; signal
    connections made through :meth:`connect` last until its next ``stop()``. A context built
    without a supervisor (e.g. in a unit test of one component) gives access to every
    component it holds, reports no statuses and takes :meth:`degraded` silently.
    """

    def __init__(
        self,
        settings: Mapping[str, Any] | None = None,
        state_dir: Path | str = ".",
        components: Mapping[str, Component] | None = None,
        *,
        owner: str | None = None,
        allowed: Collection[str] | None = None,
        condition: Callable[[str | None], None] | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.settings: Mapping[str, Any] = settings if settings is not None else {}
        self.state_dir = Path(state_dir)
        self._components: Mapping[str, Component] = components if components is not None else {}
        self.owner = owner
        self._allowed = frozenset(allowed) if allowed is not None else None
        self._condition = condition
        self._supervisor = supervisor
        self._changed: Signal[[str, bool]] = (
            supervisor.changed if supervisor is not None else Signal()
        )
        self._connections: list[Callable[[], None]] = []

    def for_component(
        self, component: Component, condition: Callable[[str | None], None] | None = None
    ) -> AgentContext:
        """The view handed to ``component``: only what it declared in ``requires``;
        ``condition`` takes what the component says of its own health."""
        return AgentContext(
            self.settings,
            self.state_dir,
            self._components,
            owner=component.name,
            allowed=tuple(component.requires),
            condition=condition,
            supervisor=self._supervisor,
        )

    # -- what the agent shares ---------------------------------------------------------------

    def setting(self, key: str, kind: type[T]) -> T:
        """The shared setting ``key``, checked to be a ``kind`` (the daemon shares its
        ``agent`` settings and its xDS ``node``)."""
        try:
            value = self.settings[key]
        except KeyError:
            known = ", ".join(sorted(self.settings)) or "none"
            raise ComponentLookupError(
                f"{self._who()} asked for the setting {key!r}, which the agent does not share "
                f"(it shares: {known})"
            ) from None
        if not isinstance(value, kind):
            raise ComponentLookupError(
                f"the setting {key!r} is a {type(value).__qualname__}, not the "
                f"{kind.__qualname__} that {self._who()} needs"
            )
        return value

    def statuses(self) -> list[ComponentState]:
        """Every component's state, in start order (what the node's health report shows)."""
        return self._supervisor.statuses() if self._supervisor is not None else []

    @property
    def component_changed(self) -> Signal[[str, bool]]:
        """Emitted with ``(name, serving)`` whenever any component starts serving or stops
        (fails, is degraded, is stopped): the supervisor's ``on_change``."""
        return self._changed

    def connect(self, signal: Signal[P], callback: Callable[P, None]) -> None:
        """Connects ``callback`` to ``signal`` until the component is stopped: the supervisor
        disconnects it before the component's ``stop()``, so a restarted component connects
        afresh in its next ``start()`` and a stopped one hears nothing."""
        self._connections.append(signal.connect(callback))

    def _disconnect_all(self) -> None:
        """Undoes every :meth:`connect` made through this context (the supervisor's job)."""
        while self._connections:
            self._connections.pop()()

    # -- what the component says of itself ---------------------------------------------------

    def degraded(self, reason: str) -> None:
        """The component runs but cannot do its job, for ``reason``: it shows as ``degraded``
        with that reason, and NOT_SERVING in health, until :meth:`recovered`."""
        if self._condition is not None:
            self._condition(reason)

    def recovered(self) -> None:
        """The component does its job again (after :meth:`degraded`)."""
        if self._condition is not None:
            self._condition(None)

    # -- the other components ----------------------------------------------------------------

    def get(self, name: str) -> Component:
        """The component called ``name``."""
        if self._allowed is not None and name not in self._allowed:
            declared = ", ".join(sorted(self._allowed)) or "nothing"
            raise ComponentLookupError(
                f"component {self.owner!r} asked for {name!r}, which it does not declare in "
                f"requires (it declares: {declared}); add it so it is started first"
            )
        try:
            return self._components[name]
        except KeyError:
            known = ", ".join(sorted(self._components)) or "none"
            who = f"component {self.owner!r} asked for" if self.owner else "no component named"
            raise ComponentLookupError(
                f"{who} {name!r}, which is not a known component (known: {known})"
            ) from None

    def require(self, name: str, kind: Callable[..., T]) -> T:
        """The component called ``name``, checked to be a ``kind``: a class, or a
        ``runtime_checkable`` protocol (hence the type: mypy takes a protocol for a callable,
        not for a ``type``)."""
        component = self.get(name)
        if not isinstance(component, cast(type, kind)):
            raise ComponentLookupError(
                f"component {name!r} is a {type(component).__qualname__}, not the "
                f"{kind.__qualname__} that {self._who()} needs"
            )
        return cast(T, component)

    def _who(self) -> str:
        return f"component {self.owner!r}" if self.owner else "the caller"


def component_problem(obj: object) -> str | None:
    """Why ``obj`` is not a usable component, or None if it looks like one."""
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        return f"{obj!r} has no non-empty string 'name'"
    requires = getattr(obj, "requires", None)
    if isinstance(requires, str) or not isinstance(requires, tuple | list):
        return f"component {name!r}: 'requires' must be a tuple of names, not {requires!r}"
    if not all(isinstance(r, str) for r in requires):
        return f"component {name!r}: 'requires' must hold only names, got {requires!r}"
    for method in ("start", "run", "stop"):
        if not callable(getattr(obj, method, None)):
            return f"component {name!r} has no {method}() method"
    return None


def _validate(components: Sequence[Component]) -> list[Component]:
    """The components in start order, or ComponentGraphError."""
    by_name: dict[str, Component] = {}
    for component in components:
        problem = component_problem(component)
        if problem is not None:
            raise ComponentGraphError(problem)
        if component.name in by_name:
            raise ComponentGraphError(
                f"two components are named {component.name!r} "
                f"({by_name[component.name]!r} and {component!r})"
            )
        by_name[component.name] = component
    needs: dict[str, set[str]] = {}
    for name, component in by_name.items():
        for required in component.requires:
            if required not in by_name:
                raise ComponentGraphError(
                    f"component {name!r} requires {required!r}, which is not a known "
                    f"component (known: {', '.join(sorted(by_name))})"
                )
        needs[name] = set(component.requires)
    # Kahn's algorithm with a heap: the smallest name among those ready starts first.
    dependents: dict[str, list[str]] = {name: [] for name in by_name}
    for name, wanted in needs.items():
        for r in wanted:
            dependents[r].append(name)
    waiting = {name: len(wanted) for name, wanted in needs.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[Component] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(by_name[name])
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(by_name):
        left = {name for name, count in waiting.items() if count > 0}
        cycle = _find_cycle(left, needs)
        raise ComponentGraphError(f"components require each other in a cycle: {' -> '.join(cycle)}")
    return order


def _find_cycle(nodes: set[str], needs: Mapping[str, set[str]]) -> list[str]:
    """A cycle among ``nodes`` (which must hold one), as ``[a, b, ..., a]``."""
    start = min(nodes)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    # Every node left over by Kahn's algorithm needs another left-over node, so following
    # the smallest such requirement must come back to a node already on the path.
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(r for r in needs[node] if r in nodes)
    return [*path[seen[node] :], node]


class _Slot:
    """The supervisor's book-keeping for one component."""

    def __init__(self, component: Component, context: AgentContext) -> None:
        self.component = component
        self.context = context
        self.state: State = "stopped"
        self.last_error: str | None = None
        self.degraded: str | None = None  # why, while the running component says so
        self.restarts = 0
        self.task: asyncio.Task[None] | None = None
        self.needs_stop = False
        self.first_attempt = asyncio.Event()

    @property
    def name(self) -> str:
        return self.component.name


def _no_change(name: str, serving: bool) -> None:
    pass


class Supervisor:
    """Starts components in dependency order, keeps each one's ``run()`` going in its own task,
    restarts a failed one with backoff without touching the others, and stops them in reverse.

    ``on_change(name, serving)`` is called (and :attr:`changed` emitted) with True when a
    component becomes running and with False when it fails, says it is degraded or is stopped.
    ``settings`` are shared with every component (:meth:`AgentContext.setting`).
    ``reset_after`` is how long (seconds) a component must have run healthily for its backoff to
    start again from the first delay. ``start_timeout`` bounds each ``start()`` call (a start
    that takes longer counts as failed); ``stop_timeout`` bounds the ``stop()`` call made after
    a failure.

    A component that raises :class:`~mesh_core.errors.ComponentFatalError` is not restarted:
    the agent cannot run as set up. During :meth:`start` that stops every component and
    raises it; later, :meth:`failure` returns it, and the agent is expected to stop.
    """

    def __init__(
        self,
        components: Sequence[Component],
        *,
        settings: Mapping[str, Any] | None = None,
        state_dir: Path | str = ".",
        backoff: Backoff = DEFAULT_BACKOFF,
        on_change: Callable[[str, bool], None] = _no_change,
        reset_after: float = 30.0,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        ordered = _validate(components)
        self.changed: Signal[[str, bool]] = Signal()
        self._context = AgentContext(
            settings, state_dir, {c.name: c for c in ordered}, supervisor=self
        )
        self._backoff = backoff
        self._on_change = on_change
        self._reset_after = reset_after
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._slots = [_Slot(c, self._context) for c in ordered]
        for slot in self._slots:
            slot.context = self._context.for_component(
                slot.component, functools.partial(self._condition, slot)
            )
        self._by_name = {slot.name: slot for slot in self._slots}
        self._started = False
        self._stopping = False
        self._fatal: ComponentFatalError | None = None
        self._failed = asyncio.Event()

    @property
    def context(self) -> AgentContext:
        """The agent-wide context (not limited to any component's requirements)."""
        return self._context

    @property
    def order(self) -> tuple[str, ...]:
        """Component names in start order; stop order is the reverse."""
        return tuple(slot.name for slot in self._slots)

    def statuses(self) -> list[ComponentState]:
        """A snapshot of every component, in start order."""
        return [self._state_of(slot) for slot in self._slots]

    def status(self, name: str) -> ComponentState:
        return self._state_of(self._by_name[name])

    @staticmethod
    def _state_of(slot: _Slot) -> ComponentState:
        if slot.state == "running" and slot.degraded is not None:
            return ComponentState(slot.name, "degraded", slot.degraded, slot.restarts)
        return ComponentState(slot.name, slot.state, slot.last_error, slot.restarts)

    def _condition(self, slot: _Slot, reason: str | None) -> None:
        """What ``slot``'s component says of itself (None: fine) through its context."""
        if reason == slot.degraded:
            return
        slot.degraded = reason
        if slot.state != "running":
            return  # starting, failed or stopped say more; it counts once it runs
        if reason is not None:
            log.warning("component degraded", component=slot.name, reason=reason)
        else:
            log.info("component recovered", component=slot.name)
        self._notify(slot.name, reason is None)

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Starts every component in dependency order. Each start is awaited before the next
        begins; a component whose start fails is left to restart in the background and the
        others start anyway (they may see it degraded, the agent stays up). A start that
        raises :class:`~mesh_core.errors.ComponentFatalError` stops what was started and is
        raised here."""
        if self._started:
            raise RuntimeError("the supervisor was already started")
        self._started = True
        for slot in self._slots:
            if self._stopping or self._fatal is not None:
                break
            down = [r for r in slot.component.requires if self._by_name[r].state != "running"]
            if down:
                log.warning(
                    "starting component although what it requires is not running",
                    component=slot.name,
                    not_running=down,
                )
            slot.task = asyncio.create_task(self._supervise(slot), name=f"component:{slot.name}")
            waiter = asyncio.create_task(slot.first_attempt.wait())
            try:
                await asyncio.wait({slot.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if self._fatal is not None:
            await self.stop()
            raise self._fatal
        log.info("components started", order=list(self.order))

    async def failure(self) -> ComponentFatalError:
        """Waits until a component fails fatally (after :meth:`start`); returns its error."""
        await self._failed.wait()
        assert self._fatal is not None
        return self._fatal

    async def stop(self, timeout: float = 5.0) -> None:
        """Stops every component, dependents before what they depend on: cancels its run task
        and awaits it, then calls its ``stop()``, each step bounded by ``timeout`` seconds. A
        component that overruns or raises is logged and left behind; shutdown goes on."""
        self._stopping = True
        for slot in reversed(self._slots):
            log.info("component stopping", component=slot.name)
            task = slot.task
            if task is not None and not task.done():
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    log.warning(
                        "component did not finish after cancellation",
                        component=slot.name,
                        timeout=timeout,
                    )
            if task is not None and task.done() and not task.cancelled():
                error = task.exception()
                if error is not None:
                    log.error("component task ended in error", component=slot.name, exc_info=error)
            if slot.needs_stop:
                await self._stop_component(slot, timeout)
            if slot.state != "stopped":
                slot.state = "stopped"
                self._notify(slot.name, False)
        log.info("components stopped")

    async def _supervise(self, slot: _Slot) -> None:
        # The task has its own context: every line the component (and the tasks it starts)
        # writes names it.
        structlog.contextvars.bind_contextvars(component=slot.name)
        loop = asyncio.get_running_loop()
        delays: Iterator[float] = self._backoff.delays()
        while not self._stopping:
            slot.state = "starting"
            slot.needs_stop = True
            phase = "start"
            started_at: float | None = None
            try:
                async with asyncio.timeout(self._start_timeout):
                    await slot.component.start(slot.context)
                started_at = loop.time()
                slot.state = "running"
                log.info("component running", component=slot.name, restarts=slot.restarts)
                self._notify(slot.name, slot.degraded is None)
                slot.first_attempt.set()
                phase = "run"
                await slot.component.run()
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if self._stopping or (current is not None and current.cancelling()):
                    raise
                error: BaseException = exc  # cancelled from inside the component: a failure
            except Exception as exc:
                error = exc
            else:
                log.debug(
                    "component run() returned; it stays up until shutdown", component=slot.name
                )
                return
            if self._stopping:
                return
            slot.state = "failed"
            slot.degraded = None  # a restart starts afresh
            slot.last_error = repr(error)
            log.error("component failed", component=slot.name, phase=phase, exc_info=error)
            self._notify(slot.name, False)
            await self._stop_component(slot, self._stop_timeout)
            if isinstance(error, ComponentFatalError):
                log.error("component cannot run; the agent stops", component=slot.name)
                self._fatal = self._fatal or error
                self._failed.set()
                slot.first_attempt.set()
                return
            slot.first_attempt.set()
            if started_at is not None and loop.time() - started_at >= self._reset_after:
                delays = self._backoff.delays()
            delay = next(delays)
            slot.restarts += 1
            slot.state = "restarting"
            log.info(
                "restarting component",
                component=slot.name,
                delay=round(delay, 3),
                restarts=slot.restarts,
            )
            await asyncio.sleep(delay)

    async def _stop_component(self, slot: _Slot, timeout: float) -> None:
        slot.needs_stop = False
        slot.context._disconnect_all()
        try:
            async with asyncio.timeout(timeout):
                await slot.component.stop()
        except TimeoutError:
            log.warning("component stop() timed out", component=slot.name, timeout=timeout)
        except Exception as exc:
            log.warning("component stop() raised; ignored", component=slot.name, exc_info=exc)

    def _notify(self, name: str, serving: bool) -> None:
        for callback in (self._on_change, self.changed.emit):
            try:
                callback(name, serving)
            except Exception as exc:
                log.error(
                    "on_change callback raised", component=name, serving=serving, exc_info=exc
                )


def _may_declare(group: str) -> bool:
    """False only when no distribution on ``sys.path`` can declare entry points of ``group``:
    no ``entry_points.txt`` of a ``*.dist-info`` or ``*.egg-info`` directory names the group,
    every path entry is a directory, and no import hook adds distributions of its own. What
    the standard finder would read, read as plain text, so that a run without plugins does not
    load :mod:`importlib.metadata` and what it imports."""
    if any(
        hasattr(finder, "find_distributions") and finder is not _PathFinder
        for finder in sys.meta_path
    ):
        return True
    section = f"[{group}]"
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as found:
                names = [e.name for e in found if e.name.endswith((".dist-info", ".egg-info"))]
        except NotADirectoryError:
            return True  # a zip file: let importlib.metadata read it
        except OSError:
            continue  # a path entry that does not exist adds nothing
        for name in names:
            try:
                text = Path(entry or ".", name, "entry_points.txt").read_text(errors="replace")
            except OSError:
                continue
            if section in text:
                return True
    return False


def load_components(
    builtin: Sequence[Component], group: str = ENTRY_POINT_GROUP
) -> list[Component]:
    """The built-in components plus those installed under the entry point ``group``.

    Each entry point names a factory taking no arguments (a function, or a component class)
    that returns a component; an already built component object is accepted as is. A component
    whose name equals a built-in's replaces it, in its place; others are appended, in entry
    point name order. An entry point that cannot be imported, whose factory raises, or that
    does not yield a component is logged and skipped. When two entry points give the same new
    name, the first (by entry point name) wins and the other is logged and skipped.
    """
    result: dict[str, Component] = {c.name: c for c in builtin}
    if not _may_declare(group):
        return list(result.values())
    import importlib.metadata  # with email, zipfile, csv: only when a distribution may declare

    builtin_names = set(result)
    from_entry_point: dict[str, str] = {}
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
        dist = ep.dist.name if ep.dist is not None else None
        where = {"entry_point": ep.name, "target": ep.value, "distribution": dist}
        try:
            obj = ep.load()
        except (Exception, SystemExit) as exc:
            log.error("component entry point cannot be loaded; skipped", **where, exc_info=exc)
            continue
        if isinstance(obj, type) or (callable(obj) and component_problem(obj) is not None):
            try:
                obj = obj()
            except (Exception, SystemExit) as exc:
                log.error("component factory raised; skipped", **where, exc_info=exc)
                continue
        problem = component_problem(obj)
        if problem is not None:
            if inspect.iscoroutine(obj):
                obj.close()
                problem = "its factory is async; it must return the component itself"
            log.error(
                "component entry point does not give a component; skipped", **where, problem=problem
            )
            continue
        component = cast(Component, obj)
        name = component.name
        if name in from_entry_point:
            log.error(
                "two component entry points give the same name; the second is skipped",
                **where,
                component=name,
                kept=from_entry_point[name],
            )
            continue
        from_entry_point[name] = ep.value
        if name in builtin_names:
            log.info("built-in component replaced by entry point", component=name, **where)
        else:
            log.info("component added by entry point", component=name, **where)
        result[name] = component
    return list(result.values())
