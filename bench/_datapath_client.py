"""Bench client for the ``datapath`` section: one process per client variant, driven line by
line on stdin so the parent can interleave variants (only one process calls at a time).

``python -m bench._datapath_client --variant V --backend ADDR --agent unix:PATH [...]``
builds the variant's channel, warms it up, prints ``{"ready": ...}`` and then answers each
command with one JSON line:

* ``run N``: N sequential unary Echo calls, ``{"lat_ns": [...], "errors": k}``;
* ``paired ROUNDS BLOCK`` (variants ``paired``, ``aio_paired``): one unmeasured block per
  channel, then ROUNDS rounds of one BLOCK-call block per channel of this process, the order
  reversed every other round (the base channel is in the middle, so it is always next to
  each other one); ``{"lat_ns": {variant: [...]}, "block_p50_ns": {variant: [...]},
  "errors": {variant: k}}``;
* ``admit N``: the in-process hot path timed with ``perf_counter_ns`` (``AgentLink.decide``
  with the breaker CLOSED, the gate's whole admission, ``AgentLink.record``, a ticket's
  finish, and the sync and asyncio mesh channels' and the sync interceptor's logic around a
  stand-in call that is already finished);
* ``trip GATE`` (variant ``trip``): three calls to a failing backend, then creates GATE;
  ``{"t": time.time() at the end of the third call, "codes": [...]}``;
* ``watch GATE`` (variant ``watch``): once GATE exists, calls in a tight loop until a call
  fails fast (trailing ``mesh-circuit: open``); ``{"t": time.time() then, "calls": n}``;
* ``heal``: calls every 5 ms until this process's breaker view is CLOSED and a call
  succeeds;
* ``quit``.

Variants: ``direct`` (plain channel to the backend), ``xds`` (``xds:///SERVICE`` through the
agent, no interceptor), ``mesh`` (``mesh_channel``), ``interceptor`` (plain channel +
``mesh_interceptor``), ``noop_interceptor`` (plain channel + a pass-through interceptor:
grpcio's interceptor machinery alone), ``envoy`` (plain channel to an Envoy listener), and
``aio_direct``, ``aio_xds``, ``aio_mesh``, ``aio_noop_interceptor`` for grpc.aio.

``paired`` holds the sync channels that can share one process: ``mesh``
(``mesh_channel``), ``direct`` (plain channel to the backend, which needs no xDS bootstrap),
``xds`` (``xds:///SERVICE`` under the bootstrap ``mesh_channel`` set), ``interceptor``
(another plain channel + ``mesh_interceptor``), ``noop_interceptor`` (a plain channel + a
pass-through interceptor: grpc's interceptor machinery alone) and, given ``--envoy``,
``envoy``; ``aio_paired`` holds ``aio_direct``, ``aio_mesh`` (``aio_mesh_channel``),
``aio_xds``, ``aio_interceptor`` (``aio_mesh_interceptors``), ``aio_noop_interceptor`` and
``aio_forward`` (``aio_mesh_channel``'s own kind of xDS channel in a wrapper whose
multicallables only forward to grpc.aio's: the floor for a mesh channel, the gate left out).
Comparing channels of one process removes the process-to-process noise of comparing
separate variants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

SYNC = (
    "direct",
    "xds",
    "mesh",
    "interceptor",
    "interceptor_norecord",
    "noop_interceptor",
    "envoy",
    "trip",
    "watch",
    "paired",
)
# cProfile entries that are waits (time blocked in C), not Python work.
WAITS = ("_blocking", "'poll' of", "selectors.py", "'acquire' of", "'wait' of")
AIO = ("aio_direct", "aio_xds", "aio_mesh", "aio_noop_interceptor", "aio_paired")
# The channels of the paired variants, in block order (reversed every other round): the base
# in the middle, the mesh channel next to it (and, asyncio, next to the forwarding floor).
PAIRED = ("xds", "interceptor", "mesh", "direct", "noop_interceptor", "envoy")
AIO_PAIRED = (
    "aio_xds",
    "aio_interceptor",
    "aio_forward",
    "aio_mesh",
    "aio_direct",
    "aio_noop_interceptor",
)
CALL_TIMEOUT = 5.0


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def paired_result(
    rounds: int, names: tuple[str, ...], results: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Gathers the measured blocks (``(variant, run result)`` in call order)."""
    lat: dict[str, list[int]] = {name: [] for name in names}
    block_p50: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0)
    for name, result in results:
        lat[name].extend(result["lat_ns"])
        block_p50[name].append(statistics.median(result["lat_ns"]))
        cpu[name].append(result["cpu_ns"])
        errors[name] += result["errors"]
    return {
        "lat_ns": lat,
        "block_p50_ns": block_p50,
        "cpu_ns": {name: statistics.median(values) for name, values in cpu.items()},
        "errors": errors,
        "rounds": rounds,
    }


def paired_order(names: tuple[str, ...], r: int) -> tuple[str, ...]:
    return names if r % 2 == 0 else names[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._datapath_client", description=__doc__)
    parser.add_argument("--variant", required=True, choices=SYNC + AIO)
    parser.add_argument("--service", default="echo")
    parser.add_argument("--backend", required=True, help="HOST:PORT of the backend")
    parser.add_argument("--agent", required=True, help="unix:PATH of the node agent")
    parser.add_argument("--envoy", help="HOST:PORT of the Envoy listener (variant envoy)")
    parser.add_argument("--node-id", default=f"bench-datapath-{os.getpid()}")
    parser.add_argument("--warmup", type=int, default=200, help="calls before ready")
    args = parser.parse_args()
    if args.variant in ("xds", "aio_xds"):
        from mesh_agent.client import configure_bootstrap

        # Before the first xds: channel: grpcio reads the bootstrap once per process.
        configure_bootstrap([args.agent], args.node_id)
    if args.variant in AIO:
        AioClient(args).serve()
    else:
        SyncClient(args).serve()


# -- sync ------------------------------------------------------------------------------------


class SyncClient:
    def __init__(self, args: argparse.Namespace) -> None:
        from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
        from mesh_agent.client import mesh_channel, mesh_interceptor

        self.args = args
        self.grpc = grpc
        self.link: Any = None
        variant = args.variant
        self.channels: list[Any] = []
        if variant == "paired":
            channel = mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
            self.interceptor = mesh_interceptor(args.service, agent=args.agent)
            paired = {
                "mesh": channel,
                "direct": grpc.insecure_channel(args.backend),
                # Under the bootstrap mesh_channel set: xDS alone, no gate.
                "xds": grpc.insecure_channel(f"xds:///{args.service}"),
                "interceptor": grpc.intercept_channel(
                    grpc.insecure_channel(args.backend), self.interceptor
                ),
                "noop_interceptor": grpc.intercept_channel(
                    grpc.insecure_channel(args.backend), Noop()
                ),
            }
            if args.envoy:
                paired["envoy"] = grpc.insecure_channel(args.envoy)
            self.channels = [c for name, c in paired.items() if name != "mesh"]
            self.paired_names = tuple(name for name in PAIRED if name in paired)
            self.stubs = {name: echo_pb2_grpc.EchoServiceStub(c) for name, c in paired.items()}
        elif variant in ("mesh", "trip", "watch"):
            channel = mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
        elif variant == "xds":
            channel = grpc.insecure_channel(f"xds:///{args.service}")
        elif variant in ("interceptor", "interceptor_norecord"):
            self.interceptor = mesh_interceptor(args.service, agent=args.agent)
            if variant == "interceptor_norecord":
                # Profiling aid: no outcome is queued, so the report thread stays idle.
                self.interceptor._link.record = lambda *a, **k: None  # type: ignore[method-assign]
            channel = grpc.intercept_channel(grpc.insecure_channel(args.backend), self.interceptor)
        elif variant == "noop_interceptor":
            channel = grpc.intercept_channel(grpc.insecure_channel(args.backend), Noop())
        elif variant == "envoy":
            if not args.envoy:
                raise SystemExit("--envoy is required for variant envoy")
            channel = grpc.insecure_channel(args.envoy)
        else:
            channel = grpc.insecure_channel(args.backend)
        if variant in ("mesh", "interceptor", "interceptor_norecord", "trip", "watch", "paired"):
            from mesh_agent.client._link import link_for

            self.link = link_for(args.agent)
        self.channel = channel
        self.stub = echo_pb2_grpc.EchoServiceStub(channel)
        if variant != "paired":
            self.stubs = {variant: self.stub}
        self.request = echo_pb2.EchoRequest(message="bench")
        self.echo_pb2 = echo_pb2

    def serve(self) -> None:
        started = time.perf_counter()
        if self.args.variant not in ("trip", "watch"):
            # The first call waits for the xDS config (or the connection); then warm up.
            for stub in self.stubs.values():
                stub.Echo(self.request, timeout=30, wait_for_ready=True)
                self.calls(stub.Echo, self.args.warmup)
        breaker = self.wait_view() if self.link is not None else None
        emit(
            {
                "ready": True,
                "variant": self.args.variant,
                "setup_ms": round((time.perf_counter() - started) * 1000, 1),
                "breaker": breaker,
            }
        )
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "run":
                emit(self.run(int(arg)))
            elif command == "paired":
                rounds, block = map(int, arg.split())
                emit(self.paired(rounds, block))
            elif command == "admit":
                emit(self.admit(int(arg)))
            elif command == "profile":
                n = int(arg)
                emit(profile(lambda n=n: self.run(n), n))
            elif command == "trip":
                emit(self.trip(Path(arg)))
            elif command == "watch":
                emit(self.watch(Path(arg)))
            elif command == "heal":
                emit(self.heal())
            elif command == "quit":
                break
            else:
                emit({"error": f"unknown command {line.strip()!r}"})
        for channel in [self.channel, *self.channels]:
            channel.close()

    def wait_view(self, timeout: float = 10.0) -> str | None:
        """Waits until this process knows the service's breaker, enabled by its policy;
        returns its state name (`` (off)`` appended if still not enabled)."""
        deadline = time.monotonic() + timeout
        while (view := self.link.breakers.get(self.args.service)) is None or not view.enabled:
            if time.monotonic() > deadline:
                if view is None:
                    return None
                break
            time.sleep(0.005)
        from mesh.v1 import agent_pb2

        return str(agent_pb2.BreakerState.Name(view.state)) + ("" if view.enabled else " (off)")

    def paired(self, rounds: int, block: int) -> dict[str, Any]:
        stubs, names = self.stubs, self.paired_names
        for name in names:  # unmeasured
            self.calls(stubs[name].Echo, block)
        results = [
            (name, self.calls(stubs[name].Echo, block))
            for r in range(rounds)
            for name in paired_order(names, r)
        ]
        return paired_result(rounds, names, results)

    def run(self, n: int) -> dict[str, Any]:
        return self.calls(self.stub.Echo, n)

    def calls(self, stub_echo: Any, n: int) -> dict[str, Any]:
        request, clock = self.request, time.perf_counter_ns
        rpc_error = self.grpc.RpcError
        lat = [0] * n
        errors = 0
        cpu0, thread0 = time.process_time_ns(), time.thread_time_ns()
        for i in range(n):
            t0 = clock()
            try:
                stub_echo(request, timeout=CALL_TIMEOUT)
            except rpc_error:
                errors += 1
            lat[i] = clock() - t0
        return {
            "lat_ns": lat,
            "errors": errors,
            "cpu_ns": (time.process_time_ns() - cpu0) / max(n, 1),
            "thread_cpu_ns": (time.thread_time_ns() - thread0) / max(n, 1),
        }

    def admit(self, n: int) -> dict[str, Any]:
        from mesh_agent.client import MeshClientInterceptor
        from mesh_agent.client._aio_channel import _UnaryUnary as AioUnaryUnary
        from mesh_agent.client._gate import Gate
        from mesh_agent.client._link import Decision
        from mesh_agent.client._sync_channel import _UnaryUnary

        link, service, clock = self.link, self.args.service, time.perf_counter_ns
        assert link is not None, "admit needs a variant with an AgentLink"
        view = link.breakers.get(service)
        decide = link.decide
        decision = decide(service)[0]
        # decide(): n calls; the loop's own cost is subtracted.
        t0 = clock()
        for _ in range(n):
            pass
        empty = clock() - t0
        t0 = clock()
        for _ in range(n):
            decide(service)
        decide_ns = (clock() - t0 - empty) / n
        # The gate's whole admission: the policy looked up, decide(), the ticket, the
        # telemetry check (none installed here).
        gate = Gate(link, service)
        admit, method = gate.admit, _DETAILS.method
        t0 = clock()
        for _ in range(n):
            admit(method, None, None)
        admit_ns = (clock() - t0 - empty) / n
        # Building the CallOutcome message alone (record() builds one per call).
        from mesh.v1 import agent_pb2

        outcome = agent_pb2.CallOutcome
        wall = time.time
        t0 = clock()
        for _ in range(m := min(n, 100_000)):
            outcome(service=service, code="OK", latency_us=200, end_unix_ms=int(wall() * 1000))
        outcome_ns = (clock() - t0) / m
        # record(): fewer, to stay under the link's MAX_PENDING; they are real outcomes.
        m = min(n, 20_000)
        record = link.record
        time.sleep(0.05)
        t0 = clock()
        for _ in range(m):
            record(service, "OK", 0.0002)
        record_ns = (clock() - t0) / m
        time.sleep(0.1)  # let the report thread send them
        # A ticket's finish: classification and record().
        ticket = admit(method, None, None)
        t0 = clock()
        for _ in range(m):
            ticket.finish("OK", "")
        finish_ns = (clock() - t0) / m
        time.sleep(0.1)
        # The mesh channels' whole logic (gate, call, outcome) around a stand-in for grpcio's
        # multicallable whose call is already finished: sync (a blocking call) and asyncio
        # (the call object returned, its done-callback run at once).
        sync_call = _UnaryUnary(_answer, gate, method)
        t0 = clock()
        for _ in range(m):
            sync_call(None)
        channel_ns = (clock() - t0) / m
        t0 = clock()
        for _ in range(m):
            _answer(None, timeout=None, metadata=None)
        channel_ns -= (clock() - t0) / m
        time.sleep(0.1)
        aio_call = AioUnaryUnary(_aio_answer, gate, method)
        t0 = clock()
        for _ in range(m):
            aio_call(None)
        aio_channel_ns = (clock() - t0) / m
        t0 = clock()
        for _ in range(m):
            _aio_answer(None, timeout=None).add_done_callback(_nothing)
        aio_channel_ns -= (clock() - t0) / m
        time.sleep(0.1)
        # The whole sync interceptor (decide, continuation, done-callback with record)
        # around a stand-in for grpcio's call, which finishes at once.
        interceptor = MeshClientInterceptor(link, service)
        call = _DoneCall()
        details = _DETAILS

        def continuation(details: Any, request: Any) -> _DoneCall:
            return call

        intercept = interceptor.intercept_unary_unary
        t0 = clock()
        for _ in range(m):
            intercept(continuation, details, None)
        intercept_ns = (clock() - t0) / m
        t0 = clock()
        for _ in range(m):
            continuation(None, None).add_done_callback(_nothing)
        stand_in_ns = (clock() - t0) / m
        time.sleep(0.1)
        return {
            "decision": decision.name,
            "breaker_state": view.state if view is not None else None,
            "closed": decision is Decision.ADMIT,
            "decide_ns": round(decide_ns, 1),
            "admit_ns": round(admit_ns, 1),
            "record_ns": round(record_ns, 1),
            "finish_ns": round(finish_ns, 1),
            "channel_ns": round(channel_ns, 1),
            "aio_channel_ns": round(aio_channel_ns, 1),
            "outcome_proto_ns": round(outcome_ns, 1),
            "intercept_ns": round(intercept_ns - stand_in_ns, 1),
            "iterations": n,
            "record_iterations": m,
        }

    # -- propagation roles -----------------------------------------------------------------

    def _view_closed(self) -> bool:
        from mesh_agent.client._link import CLOSED

        view = self.link.breakers.get(self.args.service)
        return view is not None and view.state == CLOSED

    def _call(self) -> tuple[str, bool]:
        """One call: (code name, failed fast by the mesh)."""
        try:
            self.stub.Echo(self.request, timeout=2.0)
            return "OK", False
        except self.grpc.RpcError as error:
            call: Any = error
            trailing: dict[str, Any] = dict(call.trailing_metadata() or ())
            fast = trailing.get("mesh-circuit") == "open"
            return str(call.code().name), fast

    def trip(self, gate: Path) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not self._view_closed() and time.monotonic() < deadline:
            time.sleep(0.005)
        codes = []
        for _ in range(3):
            code, fast = self._call()
            codes.append(code + (" (fast)" if fast else ""))
        t = time.time()
        gate.touch()
        return {"t": t, "codes": codes}

    def watch(self, gate: Path) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not gate.exists():
            if time.monotonic() > deadline:
                return {"error": "no gate"}
            time.sleep(0.0002)
        started = time.time()
        calls = 0
        while time.monotonic() < deadline:
            calls += 1
            _, fast = self._call()
            if fast:
                return {"t": time.time(), "calls": calls, "started": started}
        return {"error": f"no fail-fast after {calls} calls"}

    def heal(self) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + 15
        calls = 0
        while time.monotonic() < deadline:
            calls += 1
            code, _ = self._call()
            if code == "OK" and self._view_closed():
                return {"ok": True, "calls": calls, "ms": (time.monotonic() - started) * 1000}
            time.sleep(0.005)
        return {"ok": False, "calls": calls}


def profile(calls: Any, n: int, top: int = 15) -> dict[str, Any]:
    """``calls()`` (n calls) under cProfile, which sees the calling thread only (not the
    report thread); the ``top`` functions by own time per call, leaving out waits
    (time blocked in C: the call itself, epoll)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    calls()
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(path).parts[-2:]) if path != "~" else ""
        entries.append(
            {
                "function": f"{short}:{line}:{func}" if short else func,
                "per_call": round(ncalls / n, 2),
                "own_us": round(tottime / n * 1e6, 2),
                "cum_us": round(cumtime / n * 1e6, 2),
            }
        )
    entries = [e for e in entries if not any(w in str(e["function"]) for w in WAITS)]
    entries.sort(key=lambda e: e["own_us"], reverse=True)
    total = sum(e["own_us"] for e in entries)
    return {"top": entries[:top], "total_own_us": round(total, 2)}


def _nothing(call: Any) -> None:
    pass


class Noop(grpc.UnaryUnaryClientInterceptor):
    """A pass-through sync interceptor: grpc's interceptor machinery alone."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(details, request)


def _answer(request: Any, **kwargs: Any) -> str:
    """Stands in for grpcio's blocking call: answers at once."""
    return "answer"


class _DoneAioCall:
    """Stands in for a finished grpc.aio call: the done-callback runs at once, the status is
    there."""

    async def code(self) -> Any:
        return grpc.StatusCode.OK

    async def details(self) -> str:
        return ""

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


_DONE_AIO_CALL = _DoneAioCall()


def _aio_answer(request: Any, **kwargs: Any) -> _DoneAioCall:
    """Stands in for grpc.aio's multicallable: its call is already finished."""
    return _DONE_AIO_CALL


# What grpcio hands an interceptor for a unary call of the measured method.
_DETAILS = types.SimpleNamespace(
    method="/mesh.demo.v1.EchoService/Echo",
    timeout=None,
    metadata=None,
    credentials=None,
    wait_for_ready=None,
    compression=None,
)


class _DoneCall:
    """Stands in for a finished grpcio call: the done-callback runs at once."""

    def code(self) -> Any:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""

    def add_done_callback(self, fn: Any) -> None:
        fn(self)


# -- asyncio ---------------------------------------------------------------------------------


class AioClient:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def serve(self) -> None:
        loop = self.loop
        started = time.perf_counter()
        loop.run_until_complete(self.setup())
        emit(
            {
                "ready": True,
                "variant": self.args.variant,
                "setup_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "run":
                emit(loop.run_until_complete(self.run(int(arg))))
            elif command == "paired":
                rounds, block = map(int, arg.split())
                emit(loop.run_until_complete(self.paired(rounds, block)))
            elif command == "profile":
                n = int(arg)
                emit(profile(lambda n=n: loop.run_until_complete(self.run(n)), n))
            elif command == "quit":
                break
            else:
                emit({"error": f"unknown command {line.strip()!r}"})
        for channel in [self.channel, *self.channels]:
            loop.run_until_complete(channel.close())
        loop.close()

    async def setup(self) -> None:
        from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
        from mesh_agent.client import aio_mesh_channel, aio_mesh_interceptors
        from mesh_core.names import client_listener_name

        args = self.args
        self.channels: list[Any] = []
        if args.variant == "aio_paired":
            channel = aio_mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
            paired = {
                "aio_mesh": channel,
                "aio_direct": grpc.aio.insecure_channel(args.backend),
                # Under the bootstrap aio_mesh_channel set: xDS alone, no gate.
                "aio_xds": grpc.aio.insecure_channel(f"xds:///{args.service}"),
                "aio_interceptor": grpc.aio.insecure_channel(
                    args.backend,
                    interceptors=aio_mesh_interceptors(args.service, agent=args.agent),
                ),
                "aio_noop_interceptor": grpc.aio.insecure_channel(
                    args.backend, interceptors=[AioNoop()]
                ),
                # aio_mesh_channel's own kind of channel (its alias Listener through the
                # agent) in a wrapper that only forwards: aio_mesh less the gate.
                "aio_forward": ForwardChannel(
                    grpc.aio.insecure_channel(
                        f"xds:///{client_listener_name(args.service)}",
                        options=[("grpc.default_authority", args.service)],
                    )
                ),
            }
            self.channels = [c for name, c in paired.items() if name != "aio_mesh"]
            self.stubs = {name: echo_pb2_grpc.EchoServiceStub(c) for name, c in paired.items()}
        elif args.variant == "aio_mesh":
            channel = aio_mesh_channel(args.service, agent=args.agent, node_id=args.node_id)
        elif args.variant == "aio_xds":
            channel = grpc.aio.insecure_channel(f"xds:///{args.service}")
        elif args.variant == "aio_noop_interceptor":
            channel = grpc.aio.insecure_channel(args.backend, interceptors=[AioNoop()])
        else:
            channel = grpc.aio.insecure_channel(args.backend)
        self.channel = channel
        self.stub = echo_pb2_grpc.EchoServiceStub(channel)
        if args.variant != "aio_paired":
            self.stubs = {args.variant: self.stub}
        self.request = echo_pb2.EchoRequest(message="bench")
        self.rpc_error = grpc.aio.AioRpcError
        for stub in self.stubs.values():
            await stub.Echo(self.request, timeout=30, wait_for_ready=True)
            await self.calls(stub.Echo, self.args.warmup)

    async def paired(self, rounds: int, block: int) -> dict[str, Any]:
        stubs = self.stubs
        for name in AIO_PAIRED:  # unmeasured
            await self.calls(stubs[name].Echo, block)
        results = [
            (name, await self.calls(stubs[name].Echo, block))
            for r in range(rounds)
            for name in paired_order(AIO_PAIRED, r)
        ]
        return paired_result(rounds, AIO_PAIRED, results)

    async def run(self, n: int) -> dict[str, Any]:
        return await self.calls(self.stub.Echo, n)

    async def calls(self, stub_echo: Any, n: int) -> dict[str, Any]:
        request, clock = self.request, time.perf_counter_ns
        rpc_error = self.rpc_error
        lat = [0] * n
        errors = 0
        cpu0, thread0 = time.process_time_ns(), time.thread_time_ns()
        for i in range(n):
            t0 = clock()
            try:
                await stub_echo(request, timeout=CALL_TIMEOUT)
            except rpc_error:
                errors += 1
            lat[i] = clock() - t0
        return {
            "lat_ns": lat,
            "errors": errors,
            "cpu_ns": (time.process_time_ns() - cpu0) / max(n, 1),
            "thread_cpu_ns": (time.thread_time_ns() - thread0) / max(n, 1),
        }


class AioNoop(grpc.aio.UnaryUnaryClientInterceptor):
    """A pass-through asyncio interceptor: grpc.aio's interceptor machinery alone."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(details, request)


class Forward:
    """A multicallable that only forwards to grpc.aio's."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(
        self,
        request: Any,
        *,
        timeout: Any = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: Any = None,
        compression: Any = None,
    ) -> Any:
        return self._inner(
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


class ForwardChannel:
    """A channel of ours around grpc.aio's whose unary multicallables only forward: what any
    channel wrapper costs before it does anything."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Forward:
        return Forward(self._channel.unary_unary(method, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


if __name__ == "__main__":
    main()
