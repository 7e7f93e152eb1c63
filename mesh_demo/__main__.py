"""``make demo``: a working mesh on the embedded file store, narrated.

Issues a development CA and certificates with ``meshctl certs`` (mTLS between the agent and
mesh-control, an operator certificate for ``meshctl``; ``--no-tls`` runs without), starts
mesh-control, a mesh-agent, two echo backends and a client that calls ``xds:///echo``
through grpcio's own xDS client, then changes the config with ``meshctl`` while the client's
calls scroll by, one timestamped line each: one endpoint, then two (traffic spreads), one
reporting NOT_SERVING, one stopped and restarted, both failing (the breaker opens and closes),
a control-server outage, a bad hand edit in the store directory (reported, ignored), the
service deleted and re-created, then a canary release: a third backend runs v2, subsets and a
weighted route move the calls from v1 to v2 (90/10, 50/50, 0/100), each step's calls counted
by version, and last the zones: the node is in zone eu-1a with alpha and beta, gamma is in
eu-1b; calls stay in eu-1a, fail over to eu-1b when eu-1a's backends fail their health checks
and come back when they pass again, and, with mTLS, a strict service (vault) served by
``mesh_server``, called over mTLS by a caller holding an identity its rules allow, refusing
another identity (PERMISSION_DENIED) and a plaintext call. The agent's breaker and
endpoint-health transitions are read from its log and shown as they happen. mesh-control
serves its web page (``--http-port``) all along; the demo prints its URL. Ctrl-C stops
everything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mesh_core import tls
from mesh_demo.client import clock
from mesh_xds.types import LISTENER

ROOT = Path(__file__).resolve().parent.parent

BREAKER_EVENTS = frozenset({"circuit opened", "circuit changed"})
HEALTH_EVENT = "endpoint health changed"
PANIC_EVENT = "health panic"
PANIC_OVER_EVENT = "health panic over"
REASON_MAX = 60
"""Health-check reasons longer than this are shortened in the narration."""


def _words(value: object) -> str:
    return str(value).replace("_", " ") if value else "?"


def _state(value: object) -> str:
    return str(value).replace("_", "-") if value else "?"


def _reason(value: object) -> str:
    """A health check's failure reason, cut to its status code and last part when long
    (``UNAVAILABLE: failed to connect ...: Connection refused`` -> ``UNAVAILABLE: Connection
    refused``); the agent's log keeps the whole text."""
    text = str(value or "?")
    if len(text) <= REASON_MAX:
        return text
    code, _, rest = text.partition(": ")
    tail = rest.rsplit(": ", 1)[-1]
    short = f"{code}: {tail}" if tail else code
    return short if len(short) <= REASON_MAX else short[: REASON_MAX - 3] + "..."


def _log_time(entry: dict[str, Any]) -> float:
    try:
        return datetime.datetime.fromisoformat(str(entry.get("timestamp"))).timestamp()
    except ValueError:
        return time.time()


UPSTREAM_CONNECTED = "upstream connected"
UPSTREAM_LOST = frozenset({"upstream stream failed", "upstream stream ended"})
UPSTREAM_UNREACHABLE = "control server unreachable"


class Narrator:
    """Narrates agent JSON log lines: breaker and endpoint-health transitions, health
    panics, and the agent's link to mesh-control (connected, lost, unreachable; repeated
    unreachable lines while it retries are told once). One per followed process."""

    def __init__(self) -> None:
        self._away = False  # mesh-control was lost or never reached
        self._told = False  # the reason it cannot be reached was told

    def __call__(self, line: str) -> str | None:
        """The narration of ``line`` as ``HH:MM:SS.mmm  text``, or None for a line that is
        not told."""
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        if not isinstance(entry, dict):
            return None
        text = self._upstream(entry)
        if text is None:
            return narrate(line)
        return f"{clock(_log_time(entry))}  {text}" if text else None

    def _upstream(self, entry: dict[str, Any]) -> str | None:
        event = str(entry.get("event", ""))
        server = entry.get("server", "?")
        if event == UPSTREAM_CONNECTED:
            again, self._away, self._told = self._away, False, False
            how = f"{entry.get('protocol', '?')} xDS"
            return f"{'reconnected' if again else 'connected'} to mesh-control at {server} ({how})"
        if event in UPSTREAM_LOST:
            self._away, self._told = True, False
            why = f": {entry['code']}" if entry.get("code") else ""
            return f"lost mesh-control at {server}{why}; serving the config it holds"
        if event == UPSTREAM_UNREACHABLE:
            if self._told:
                return ""  # told already; the agent keeps retrying
            self._away = self._told = True
            cause = str(entry.get("reason") or "?").rsplit(": ", 1)[-1]
            return f"cannot reach mesh-control at {server} ({cause}); retrying"
        return None


def narrate(line: str) -> str | None:
    """The narration for one agent JSON log line: breaker and endpoint-health transitions and
    health panics, as ``HH:MM:SS.mmm  text``; None for every other line."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    event = str(entry.get("event", ""))
    service = entry.get("service", "?")
    if event in BREAKER_EVENTS:
        text = (
            f"breaker {service}: {_state(entry.get('old'))} -> {_state(entry.get('new'))}"
            f" ({_words(entry.get('reason'))})"
        )
        until = entry.get("open_until")
        if entry.get("new") == "open" and isinstance(until, int | float):
            text += f", open until {clock(until)}"
    elif event == HEALTH_EVENT:
        text = (
            f"endpoint {service} {entry.get('address', '?')}: {entry.get('old', '?')} ->"
            f" {entry.get('new', '?')} ({_reason(entry.get('reason'))})"
        )
    elif event.startswith(PANIC_OVER_EVENT):
        text = f"health panic over for {service}: health checks applied again"
    elif event.startswith(PANIC_EVENT):
        statuses = entry.get("statuses")
        text = f"health panic for {service}: too few usable endpoints, health checks ignored"
        if isinstance(statuses, dict) and statuses:
            text += " (" + ", ".join(f"{a} {s}" for a, s in statuses.items()) + ")"
    else:
        return None
    return f"{clock(_log_time(entry))}  {text}"


CLIENT_OK = r"^\[client\] \S+  call +\d+  ok    "
CLIENT_FAIL = r"^\[client\] \S+  call +\d+  FAIL  "
WAIT = 30.0
"""Seconds a step waits for what it shows before the demo goes on without it."""


class Transcript:
    """The lines the demo has shown lately (the last :attr:`KEEP`), so that a step can wait
    for what it narrates (a client's call, an agent's transition) instead of for a fixed
    time. Written by the demo's output threads, read by the script's thread."""

    KEEP = 5000

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._dropped = 0  # lines shown before self._lines[0]
        self._changed = threading.Condition()

    def add(self, text: str) -> None:
        with self._changed:
            self._lines.extend(text.splitlines())
            if len(self._lines) > self.KEEP:  # a demo left running must not grow forever
                cut = len(self._lines) - self.KEEP // 2
                del self._lines[:cut]
                self._dropped += cut
            self._changed.notify_all()

    def mark(self) -> int:
        """Where the transcript is now: :meth:`wait` looks at the lines shown after it."""
        with self._changed:
            return self._dropped + len(self._lines)

    def wait(self, found: Callable[[list[str]], bool], since: int, timeout: float = WAIT) -> bool:
        """Waits (at most ``timeout`` seconds) until ``found`` says yes to the lines shown
        since the mark ``since``; whether it did."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not found(self._lines[max(0, since - self._dropped) :]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True


def shown(pattern: str, count: int = 1) -> Callable[[list[str]], bool]:
    """At least ``count`` lines match ``pattern``."""
    regex = re.compile(pattern)
    return lambda lines: sum(1 for line in lines if regex.search(line)) >= count


def last_calls(pattern: str, count: int) -> Callable[[list[str]], bool]:
    """The client's last ``count`` calls all match ``pattern`` (say, answered by beta)."""
    regex = re.compile(pattern)

    def found(lines: list[str]) -> bool:
        calls = [line for line in lines if line.startswith("[client] ")][-count:]
        return len(calls) == count and all(regex.search(line) for line in calls)

    return found


AGENT_AWAY = r"^\[agent\] +\S+  (lost|cannot reach) mesh-control at "


def _health_change(address: str, old: str, new: str) -> str:
    """The pattern of the agent's narration of ``address`` going from ``old`` to ``new``."""
    return re.escape(f"endpoint echo {address}: {old} -> {new} (")


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.env.setdefault("MESH_LOG_FORMAT", "json")
        self.env.setdefault("MESH_LOG_LEVEL", "warning")
        # A followed child logs JSON at info (or debug, if asked), so its transitions show.
        debug = self.env["MESH_LOG_LEVEL"].lower() == "debug"
        self.follow_env = {
            **self.env,
            "MESH_LOG_FORMAT": "json",
            "MESH_LOG_LEVEL": "debug" if debug else "info",
        }
        self.control = ""
        self.meshctl_flags: list[str] = []
        self.stopping = False
        self._out = threading.Lock()
        self.transcript = Transcript()

    def out(self, text: str, *, narration: bool = False) -> None:
        """Writes whole lines to stdout, never interleaved with another thread's; narration
        stops once the demo is stopping."""
        if text and not text.endswith("\n"):
            text += "\n"
        with self._out:
            if narration and self.stopping:
                return
            sys.stdout.write(text)
            sys.stdout.flush()
            self.transcript.add(text)

    def say(self, text: str) -> int:
        """Announces a step; returns the transcript's mark for waiting on what it shows."""
        self.out(f"\n==> {text}")
        return self.transcript.mark()

    def until(
        self, what: str, found: Callable[[list[str]], bool], since: int, timeout: float = WAIT
    ) -> None:
        """Waits until the lines shown since ``since`` show ``what`` (``found`` says when);
        says so and goes on if they do not within ``timeout`` seconds."""
        if not self.transcript.wait(found, since, timeout):
            self.out(f"(no {what} after {timeout:g}s; going on)")

    @staticmethod
    def linger(started: float, pause: float) -> None:
        """Leaves a step on screen until ``pause`` seconds after it ``started`` (monotonic)
        for a person watching; ``--pause 0`` goes on as soon as the step has shown what it
        shows."""
        time.sleep(max(0.0, started + pause - time.monotonic()))

    def _pipe(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.out(f"[{name}] {raw.decode(errors='replace')}")

    def _follow(self, name: str, stream: IO[bytes], log: IO[bytes]) -> None:
        """Copies a child's log to its file and narrates its transitions until it exits; a
        line it cannot narrate is skipped, so the pipe is always drained."""
        told = Narrator()
        with log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                try:
                    line = told(raw.decode(errors="replace"))
                except (TypeError, ValueError, OverflowError, OSError):
                    line = None
                if line:
                    self.out(f"[{name}]{' ' * max(1, 7 - len(name))}{line}", narration=True)

    def spawn(
        self, name: str, args: Sequence[str], *, show: bool = False, follow: bool = False
    ) -> subprocess.Popen[bytes]:
        """Starts ``python -m ARGS``; ``show`` prints its stdout, ``follow`` narrates its log.
        The log (stderr) always goes to ``WORKDIR/NAME.log``."""
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE if show else log,
            stderr=subprocess.PIPE if follow else log,
            env=self.follow_env if follow else self.env,
        )
        self.procs.append(proc)
        self.named[name] = proc
        if show:
            assert proc.stdout is not None
            threading.Thread(target=self._pipe, args=(name, proc.stdout), daemon=True).start()
        if follow:
            assert proc.stderr is not None
            threading.Thread(
                target=self._follow, args=(name, proc.stderr, log), daemon=True
            ).start()
        return proc

    def ready(self, name: str, args: Sequence[str], *, follow: bool = False) -> str:
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.spawn(name, [*args, "--ready-file", str(ready)], follow=follow)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {self.workdir / (name + '.log')}")
            time.sleep(0.05)
        return ready.read_text().strip()

    def backend(
        self, name: str, listen: str = "127.0.0.1:0"
    ) -> tuple[subprocess.Popen[bytes], str]:
        address = self.ready(name, ["mesh_demo.backend", "--name", name, "--listen", listen])
        return self.named[name], address

    def kill(self, name: str) -> None:
        proc = self.named[name]
        proc.kill()
        proc.wait(10)

    def terminate(self, name: str) -> None:
        """SIGTERM, then waits for the process to exit."""
        proc = self.named[name]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def configure(self, backend: str, fail: str = "") -> None:
        import grpc

        from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

        with grpc.insecure_channel(backend) as channel:
            echo_pb2_grpc.EchoServiceStub(channel).Configure(
                echo_pb2.ConfigureRequest(fail=fail), timeout=5
            )

    def _agent_status(self, agent: str) -> Any:
        import grpc

        from mesh.v1 import agent_pb2, agent_pb2_grpc

        with grpc.insecure_channel(agent) as channel:
            return agent_pb2_grpc.AgentServiceStub(channel).GetAgentStatus(
                agent_pb2.GetAgentStatusRequest(), timeout=5
            )

    def _endpoint_health(self, agent: str) -> list[tuple[str, str, str]]:
        status = self._agent_status(agent)
        return [(e.service, e.address, e.state) for e in status.endpoint_health]

    def zone_priorities(self, agent: str) -> dict[str, int]:
        """The priority each zone of ``echo`` is served at on the node, as its agent says."""
        status = self._agent_status(agent)
        return {p.zone: p.priority for p in status.zone_priorities if p.service == "echo"}

    def wait_zone_priorities(
        self, agent: str, wanted: Mapping[str, int], timeout: float = 15
    ) -> None:
        """Waits (at most ``timeout`` seconds) until the node is served ``wanted``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.zone_priorities(agent) != wanted:
            time.sleep(0.1)

    def agent_health(self, agent: str) -> None:
        self.out(
            "".join(
                f"agent: endpoint {service}/{address} is {state}\n"
                for service, address, state in self._endpoint_health(agent)
            )
        )

    def wait_health(self, agent: str, address: str, state: str, timeout: float = 15) -> None:
        """Waits (at most ``timeout`` seconds) until the agent reports ``address`` in ``state``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(a == address and s == state for _, a, s in self._endpoint_health(agent)):
                return
            time.sleep(0.1)

    def _meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "control.meshctl",
                "--control",
                self.control,
                *self.meshctl_flags,
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def meshctl(self, *args: str) -> None:
        """Runs meshctl as an operator would, and shows the command and what it printed."""
        self.out(f"$ meshctl {' '.join(args)}")
        result = self._meshctl(*args)
        self.out(result.stdout + result.stderr)

    def wait_store(self, *, problems: bool, timeout: float = 10) -> None:
        """Waits (at most ``timeout`` seconds) until mesh-control reports a store problem
        (``problems``), or none."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self._meshctl("status", "-o", "json")
            if (
                result.returncode == 0
                and bool(json.loads(result.stdout)["store_problems"]) is problems
            ):
                return
            time.sleep(0.2)

    def listener_version(self, agent: str) -> str:
        """The LDS version the agent last accepted from mesh-control."""
        import grpc

        from mesh.v1 import agent_pb2, agent_pb2_grpc

        with grpc.insecure_channel(agent) as channel:
            status = agent_pb2_grpc.AgentServiceStub(channel).GetAgentStatus(
                agent_pb2.GetAgentStatusRequest(), timeout=5
            )
        return next((t.version_acked for t in status.types if t.type_url == LISTENER), "")

    def wait_listener_change(self, agent: str, before: str, timeout: float = 15) -> None:
        """Waits (at most ``timeout`` seconds) until the agent holds listeners other than
        ``before``: the client library's listener carries the routes inline, and listeners
        are pushed after clusters and endpoints, so the subsets the routes name are there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.listener_version(agent) == before:
            time.sleep(0.05)

    def count_calls(self, agent: str, calls: int) -> Counter[str]:
        """Makes ``calls`` calls to ``echo`` from a fresh client on the node (so all of them
        see the config the agent holds now) and counts them by the backend that answered;
        failed calls count under their status code."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mesh_demo.client",
                "--service",
                "echo",
                "--xds-server",
                agent,
                "--node-id",
                "demo-canary-client",
                "--mesh",
                "--json",
                "--interval",
                "0",
                "--count",
                str(calls),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        counts: Counter[str] = Counter()
        for line in result.stdout.splitlines():
            record = json.loads(line)
            counts[record["backend"] if record["ok"] else record["code"]] += 1
        return counts

    def write_service(
        self,
        *addresses: str,
        versions: Mapping[str, str] | None = None,
        split: Mapping[str, int] | None = None,
        zones: Mapping[str, str] | None = None,
    ) -> Path:
        """Service ``echo`` on ``addresses``; ``versions`` labels them ``{address: version}``,
        and ``split`` (``{version: weight}``, with ``versions``) adds a subset per version
        and one route splitting the calls between them; ``zones`` places them
        ``{address: zone}``."""
        path = self.workdir / "echo.yaml"
        body = ["name: echo", "endpoints:"]
        for address in addresses:
            version = (versions or {}).get(address)
            zone = (zones or {}).get(address)
            extra = f", labels: {{version: {version}}}" if version else ""
            extra += f", zone: {zone}" if zone else ""
            body.append(
                f"  - {{address: {address}{extra}}}" if extra else f"  - address: {address}"
            )
        if versions and split:
            body.append("subsets:")
            body += [
                f"  - {{name: {v}, labels: {{version: {v}}}}}"
                for v in sorted(set(versions.values()))
            ]
            weights = ", ".join(f"{v}: {w}" for v, w in split.items())
            body += ["routes:", f"  - {{name: canary, to: {{{weights}}}}}"]
        body += [
            "policy:",
            "  timeout: 5s",
            "  retry: {attempts: 3, retry_on: [UNAVAILABLE], backoff: {base: 25ms, max: 250ms}}",
            "  outlier_detection: {failure_percentage: {threshold: 50, minimum_hosts: 2}}",
            "  health_check: {interval: 500ms, timeout: 500ms, unhealthy_threshold: 2,"
            " healthy_threshold: 2}",
            "  circuit_breaker: {consecutive_failures: 4, open_for: 2s, half_open_probes: 1}",
        ]
        path.write_text("\n".join(body) + "\n")
        return path

    def stop(self) -> None:
        with self._out:
            self.stopping = True
        self.say("stopping")
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def issue_certificates(demo: Demo) -> tuple[list[str], list[str]]:
    """A CA and the server's, the node's and an operator's certificates; returns the control
    server's and the agent's TLS flags, and points meshctl at the operator's."""
    pki = demo.workdir / "pki"
    demo.say(
        "a development CA (meshctl certs): mTLS between the node and mesh-control, "
        "and an operator certificate for meshctl"
    )
    demo.meshctl("certs", "init", "--out", str(pki / "ca"), "--trust-domain", "demo.mesh")
    kinds = {
        "server": ["--server", "127.0.0.1"],
        "node": ["--node", "demo-node", "--ip", "127.0.0.1"],
        "operator": ["--operator", "demo"],
    }
    for name, kind in kinds.items():
        demo.meshctl("certs", "issue", "--ca", str(pki / "ca"), *kind, "--out", str(pki / name))
    demo.meshctl_flags = tls.flags(pki / "operator")
    return tls.flags(pki / "server"), tls.flags(pki / "node")


CANARY_STEPS = ((90, 10), (50, 50), (0, 100))
"""The canary's split, v1/v2 in percent, step by step."""
CANARY_CALLS = 200
"""Calls counted at each step."""


def canary(demo: Demo, agent: str, pause: float, alpha: str, beta: str) -> str:
    """A canary release: v1 runs on alpha and beta, v2 on a new backend, gamma. Subsets v1
    and v2 and a route splitting the calls between them move the traffic over step by step;
    each step counts the calls of a fresh client by version. Returns gamma's address."""
    _, gamma = demo.backend("gamma")
    versions = {alpha: "v1", beta: "v1", gamma: "v2"}
    demo.say(
        f"a canary: v1 runs on alpha and beta, v2 on a new backend, gamma ({gamma}); "
        f"subsets v1 and v2, and a route sends v1 {CANARY_STEPS[0][0]}% of the calls, "
        f"v2 {CANARY_STEPS[0][1]}%"
    )
    for v1, v2 in CANARY_STEPS:
        if v1 != CANARY_STEPS[0][0]:
            demo.say(f"shifting the canary's split to v1 {v1}%, v2 {v2}%")
        before = demo.listener_version(agent)
        service = demo.write_service(
            alpha, beta, gamma, versions=versions, split={"v1": v1, "v2": v2}
        )
        demo.meshctl("apply", "-f", str(service))
        demo.wait_listener_change(agent, before)
        counts = demo.count_calls(agent, CANARY_CALLS)
        by_version = Counter({"v1": 0, "v2": 0})
        failed = 0
        for backend, n in counts.items():
            if backend in ("alpha", "beta"):
                by_version["v1"] += n
            elif backend == "gamma":
                by_version["v2"] += n
            else:
                failed += n
        line = f"canary {v1}/{v2}: v1 {by_version['v1']}, v2 {by_version['v2']}"
        line += f" of {CANARY_CALLS} calls" + (f", {failed} failed" if failed else "")
        mark = demo.transcript.mark()
        demo.out(line)
        if v1 == 0:  # the demo's own client, on v2 alone now
            demo.until("call answered by gamma", shown(CLIENT_OK + "gamma "), mark)
        time.sleep(pause / 2)
    return gamma


ZONE = "eu-1a"
"""The demo node's zone (``mesh-agent --zone``)."""
ZONE_CALLS = 100
"""Calls counted at each step of the zones scene."""


def zones(demo: Demo, agent: str, pause: float, alpha: str, beta: str, gamma: str) -> None:
    """Zone-aware routing: alpha and beta in the node's zone, gamma in another. Each step
    counts the calls of a fresh client by backend, and shows the priority of each zone."""
    placed = {alpha: ZONE, beta: ZONE, gamma: "eu-1b"}
    demo.say(
        f"zones: the node is in {ZONE}, with alpha and beta; gamma is in eu-1b. Calls stay "
        "in the node's zone (eu-1a at priority 0, eu-1b at 1)"
    )
    demo.meshctl("apply", "-f", str(demo.write_service(alpha, beta, gamma, zones=placed)))
    demo.wait_zone_priorities(agent, {ZONE: 0, "eu-1b": 1})
    zone_counts(demo, agent, f"{ZONE} up")
    time.sleep(pause / 2)
    demo.say(
        f"alpha and beta report NOT_SERVING: {ZONE} has no usable endpoint, the agent serves "
        "eu-1b at priority 0 and calls fail over to gamma"
    )
    for name in ("alpha", "beta"):
        demo.named[name].send_signal(signal.SIGUSR1)
    # Both, not just the priorities: one of the two down spills over to the same priorities.
    for address in (alpha, beta):
        demo.wait_health(agent, address, "unhealthy")
    demo.wait_zone_priorities(agent, {ZONE: 0, "eu-1b": 0})
    zone_counts(demo, agent, f"{ZONE} down")
    time.sleep(pause / 2)
    demo.say(f"alpha and beta pass their checks again: calls come back to {ZONE}")
    for name in ("alpha", "beta"):
        demo.named[name].send_signal(signal.SIGUSR2)
    demo.wait_zone_priorities(agent, {ZONE: 0, "eu-1b": 1})
    zone_counts(demo, agent, f"{ZONE} back")
    time.sleep(pause / 2)


def zone_counts(demo: Demo, agent: str, step: str) -> None:
    counts = demo.count_calls(agent, ZONE_CALLS)
    served = " ".join(f"{z}={p}" for z, p in sorted(demo.zone_priorities(agent).items()))
    by_backend = ", ".join(f"{b} {counts[b]}" for b in ("alpha", "beta", "gamma"))
    failed = sum(n for b, n in counts.items() if b not in ("alpha", "beta", "gamma"))
    line = f"zones, {step} ({served}): {by_backend} of {ZONE_CALLS} calls"
    demo.out(line + (f", {failed} failed" if failed else ""))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _secure(demo: Demo, *args: str) -> dict[str, Any]:
    """Runs ``python -m mesh_demo.secure ARGS`` to its end; its JSON line."""
    result = subprocess.run(
        [sys.executable, "-m", "mesh_demo.secure", *args],
        capture_output=True,
        text=True,
        env=demo.env,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def identities(demo: Demo, agent: str, pause: float) -> None:
    """mTLS between services: service vault in strict mode, served by ``mesh_server``, and a
    caller holding the identity of service teller; then a plaintext call, refused."""
    address = f"127.0.0.1:{_free_port()}"
    path = demo.workdir / "vault.yaml"
    path.write_text(
        f"name: vault\nendpoints: [{{address: '{address}'}}]\n"
        "security:\n  hosts: [demo-node]\n  mode: strict\n"
        "  authorization: [{name: tellers-only, action: allow, callers: [teller]}]\n---\n"
        "name: teller\nendpoints: []\nsecurity: {hosts: [demo-node]}\n---\n"
        "name: visitor\nendpoints: []\nsecurity: {hosts: [demo-node]}\n"
    )
    demo.say(
        "mTLS between services: service vault is strict (its callers must show a mesh "
        "certificate, and it must show vault's) and only teller may call it; teller and "
        "visitor are identities the node may hold"
    )
    demo.meshctl("apply", "-f", str(path))
    demo.ready(
        "vault",
        ["mesh_demo.secure", "serve", "--service", "vault", "--listen", address, "--agent", agent],
    )
    demo.out(
        f"vault's server (mesh_server) on {address}: its Listener and certificate come from "
        "the agent"
    )
    called = _secure(demo, "call", "--service", "vault", "--identity", "teller", "--agent", agent)
    if "error" in called:
        demo.out(f"vault: calls failed: {called['error']}")
    else:
        seen = ", ".join(called["seen"]) or "nobody"
        failed = f", failed: {', '.join(called['errors'])}" if called["errors"] else ""
        demo.out(
            f"vault: {called['ok']} of {called['calls']} calls over mTLS; the server saw the "
            f"caller as {seen}{failed}"
        )
    visitor = _secure(
        demo,
        "call",
        "--service",
        "vault",
        "--identity",
        "visitor",
        "--calls",
        "1",
        "--agent",
        agent,
    )
    outcome = (
        ", ".join(visitor.get("errors") or ["OK"]) if "error" not in visitor else visitor["error"]
    )
    demo.out(f"vault: a call from visitor: {outcome} (rule tellers-only)")
    plain = _secure(demo, "plain", "--address", address)
    demo.out(f"vault: a plaintext call: {plain.get('code', plain.get('error'))}")
    time.sleep(pause / 2)


def run(demo: Demo, pause: float, duration: float, mtls: bool = True) -> None:
    store = demo.workdir / "store"
    control_tls, agent_tls = issue_certificates(demo) if mtls else ([], [])
    demo.say(f"starting mesh-control on the file store {store}")
    control_args = [
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        f"file:{store}",
        *control_tls,
        # The development CA signs the services' identities too.
        *(["--signing-ca", str(demo.workdir / "pki" / "ca")] if mtls else []),
        # The web page, on a port kept across the control server's restart below.
        "--http-port",
        str(_free_port()),
    ]
    demo.control = demo.ready("control", control_args)
    demo.out(f"mesh-control serving on {demo.control}")
    demo.out(
        f"the mesh's web page: http://127.0.0.1:{control_args[-1]}/ (the service graph, "
        "breakers, endpoints, NACKs and config changes, live)"
    )
    socket_path = demo.workdir / "agent.sock"
    agent = demo.ready(
        "agent",
        [
            "mesh_agent",
            "run",
            "--control",
            demo.control,
            "--node-id",
            "demo-node",
            "--zone",
            ZONE,
            "--socket",
            str(socket_path),
            "--state-dir",
            str(demo.workdir / "agent-state"),
            *agent_tls,
        ],
        follow=True,
    )
    demo.out(f"mesh-agent serving the node on {agent}; its transitions show as [agent] lines")
    alpha_proc, alpha = demo.backend("alpha")
    _, beta = demo.backend("beta")
    demo.out(f"backends: alpha on {alpha}, beta on {beta}")

    demo.say("describing service 'echo' with one endpoint (alpha)")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha)))
    # Each step waits until it has shown what it is about (a call, a transition from the
    # agent's log), then stays on screen until --pause seconds have passed since it began.
    started = time.monotonic()
    mark = demo.say(
        "a client calls mesh_channel('echo'): xds:///echo through grpcio's own xDS client, "
        "fed by the agent, with the node's circuit breaker"
    )
    demo.spawn(
        "client",
        [
            "mesh_demo.client",
            "--service",
            "echo",
            "--xds-server",
            agent,
            "--node-id",
            "demo-client",
            "--interval",
            "0.25",
            "--mesh",
        ],
        show=True,
    )
    demo.until("call answered by alpha", shown(CLIENT_OK + "alpha "), mark)
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say("adding beta, with active health checks: traffic spreads over both endpoints")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha, beta)))
    for address in (alpha, beta):  # checked, so that the next step shows a change
        demo.wait_health(agent, address, "healthy")
    demo.until("call answered by beta", shown(CLIENT_OK + "beta "), mark)
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say("alpha reports NOT_SERVING: the agent's checks mark it, traffic leaves it")
    alpha_proc.send_signal(signal.SIGUSR1)
    demo.until("check marking alpha", shown(_health_change(alpha, "healthy", "unhealthy")), mark)
    demo.until("calls answered by beta alone", last_calls(CLIENT_OK + "beta ", 4), mark)
    demo.linger(started, pause)
    demo.agent_health(agent)
    started = time.monotonic()
    mark = demo.say("alpha is healthy again: traffic returns")
    alpha_proc.send_signal(signal.SIGUSR2)
    demo.until("call answered by alpha", shown(CLIENT_OK + "alpha "), mark)
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say("beta is stopped (SIGTERM): its health checks fail, traffic moves to alpha")
    demo.terminate("beta")
    demo.until("check marking beta", shown(_health_change(beta, "healthy", "unhealthy")), mark)
    demo.until(
        "calls answered by alpha alone",
        last_calls(CLIENT_OK + "alpha ", 4),
        demo.transcript.mark(),
    )
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say(
        f"beta starts again on {beta}: the checks mark it healthy, traffic spreads again"
    )
    demo.backend("beta", listen=beta)
    demo.until("check marking beta", shown(_health_change(beta, "unhealthy", "healthy")), mark)
    demo.until("call answered by beta", shown(CLIENT_OK + "beta "), demo.transcript.mark())
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say("both backends fail every call: the node's breaker opens, calls fail fast")
    for address in (alpha, beta):
        demo.configure(address, fail="UNAVAILABLE")
    demo.until("call failed fast", shown(CLIENT_FAIL + "UNAVAILABLE: circuit open"), mark)
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say(
        "the backends recover: after the open time a probe gets through, the breaker closes"
    )
    for address in (alpha, beta):
        demo.configure(address)
    demo.until("breaker closing", shown(r"breaker echo: half-open -> closed"), mark)
    demo.until("call answered", shown(CLIENT_OK), demo.transcript.mark())
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say(
        "the control server dies (SIGKILL): the agent says so, and the node keeps working on "
        "the config the agent holds"
    )
    demo.kill("control")
    demo.until("word from the agent", shown(AGENT_AWAY), mark)
    demo.until("call answered", shown(CLIENT_OK), demo.transcript.mark())
    demo.linger(started, pause)
    started = time.monotonic()
    mark = demo.say("the control server comes back on the same address; the agent reconnects")
    control_args[3] = demo.control
    demo.ready("control", control_args)
    demo.until("reconnection", shown("reconnected to mesh-control at "), mark)
    demo.linger(started, pause / 2)
    started = time.monotonic()
    demo.say("a broken hand edit in the store directory is reported and ignored")
    good = (store / "echo.yaml").read_text()
    (store / "echo.yaml").write_text("name: echo\nendpoints: [{address: 'not an address'}]\n")
    demo.wait_store(problems=True)
    demo.linger(started, pause / 2)
    demo.meshctl("status")
    time.sleep(pause / 2)
    demo.say("the operator puts the good file back: the problem clears")
    (store / "echo.yaml").write_text(good)
    demo.wait_store(problems=False)
    demo.meshctl("status")
    time.sleep(pause / 2)
    started = time.monotonic()
    mark = demo.say("deleting the service: calls fail with UNAVAILABLE")
    demo.meshctl("delete", "service", "echo")
    demo.until("call failing", shown(CLIENT_FAIL + "UNAVAILABLE: "), mark)
    demo.linger(started, pause / 2)
    started = time.monotonic()
    mark = demo.say("applying it again: calls succeed again")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha, beta)))
    demo.until("call answered", shown(CLIENT_OK), mark)
    demo.linger(started, pause)
    gamma = canary(demo, agent, pause, alpha, beta)
    zones(demo, agent, pause, alpha, beta, gamma)
    if mtls:
        identities(demo, agent, pause)
    demo.meshctl("status")
    if duration:
        return
    demo.say("the mesh keeps running; Ctrl-C stops it")
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mesh-demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    parser.add_argument(
        "--pause",
        type=float,
        default=4.0,
        help="seconds each step stays on screen at least (each waits anyway until it has "
        "shown what it is about: 0 goes straight on)",
    )
    parser.add_argument("--once", action="store_true", help="stop after the scripted steps")
    parser.add_argument(
        "--no-tls", action="store_true", help="run without mTLS (plaintext, open admin API)"
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    demo = Demo(args.workdir)
    try:
        run(demo, args.pause, 1 if args.once else 0, mtls=not args.no_tls)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()


if __name__ == "__main__":
    main()
