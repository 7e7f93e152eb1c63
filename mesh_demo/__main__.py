"""``make demo``: a working mesh on the embedded file store, narrated.

Starts mesh-control, two echo backends and a client that calls ``xds:///echo`` through
grpcio's own xDS client, then changes the config with ``meshctl`` while the client's calls
scroll by: one endpoint, then two (traffic spreads), a bad hand edit in the store directory
(reported, ignored), then the service deleted and re-created. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.env.setdefault("MESH_LOG_FORMAT", "json")
        self.env.setdefault("MESH_LOG_LEVEL", "warning")
        self.control = ""

    def say(self, text: str) -> None:
        sys.stdout.write(f"\n==> {text}\n")
        sys.stdout.flush()

    def _pipe(self, name: str, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            sys.stdout.write(f"[{name}] {raw.decode(errors='replace')}")
            sys.stdout.flush()

    def spawn(
        self, name: str, args: Sequence[str], *, show: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE if show else log,
            stderr=log,
            env=self.env,
        )
        self.procs.append(proc)
        self.named[name] = proc
        if show:
            threading.Thread(target=self._pipe, args=(name, proc.stdout), daemon=True).start()
        return proc

    def ready(self, name: str, args: Sequence[str]) -> str:
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.spawn(name, [*args, "--ready-file", str(ready)])
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start; see {self.workdir / (name + '.log')}")
            time.sleep(0.05)
        return ready.read_text().strip()

    def backend(self, name: str) -> tuple[subprocess.Popen[bytes], str]:
        address = self.ready(name, ["mesh_demo.backend", "--name", name])
        return self.named[name], address

    def kill(self, name: str) -> None:
        proc = self.named[name]
        proc.kill()
        proc.wait(10)

    def configure(self, backend: str, fail: str = "") -> None:
        import grpc

        from mesh.demo.v1 import echo_pb2, echo_pb2_grpc

        with grpc.insecure_channel(backend) as channel:
            echo_pb2_grpc.EchoServiceStub(channel).Configure(
                echo_pb2.ConfigureRequest(fail=fail), timeout=5
            )

    def agent_health(self, agent: str) -> None:
        import grpc

        from mesh.v1 import agent_pb2, agent_pb2_grpc

        with grpc.insecure_channel(agent) as channel:
            status = agent_pb2_grpc.AgentServiceStub(channel).GetAgentStatus(
                agent_pb2.GetAgentStatusRequest(), timeout=5
            )
        for endpoint in status.endpoint_health:
            sys.stdout.write(
                f"agent: endpoint {endpoint.service}/{endpoint.address} is {endpoint.state}\n"
            )

    def meshctl(self, *args: str) -> None:
        sys.stdout.write(f"$ meshctl {' '.join(args)}\n")
        result = subprocess.run(
            [sys.executable, "-m", "control.meshctl", "--control", self.control, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        sys.stdout.write(result.stdout + result.stderr)
        sys.stdout.flush()

    def write_service(self, *addresses: str) -> Path:
        path = self.workdir / "echo.yaml"
        body = ["name: echo", "endpoints:"] + [f"  - address: {a}" for a in addresses]
        body += [
            "policy:",
            "  timeout: 5s",
            "  retry: {attempts: 3, retry_on: [UNAVAILABLE], backoff: {base: 25ms, max: 250ms}}",
            "  outlier_detection: {failure_percentage: {threshold: 50, minimum_hosts: 2}}",
            "  health_check: {interval: 500ms, timeout: 250ms, unhealthy_threshold: 2,"
            " healthy_threshold: 2}",
            "  circuit_breaker: {consecutive_failures: 4, open_for: 2s, half_open_probes: 1}",
        ]
        path.write_text("\n".join(body) + "\n")
        return path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(demo: Demo, pause: float, duration: float) -> None:
    store = demo.workdir / "store"
    demo.say(f"starting mesh-control on the file store {store}")
    control_args = ["control", "serve", "--listen", "127.0.0.1:0", "--store", f"file:{store}"]
    demo.control = demo.ready("control", control_args)
    print(f"mesh-control serving on {demo.control}")
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
            "--socket",
            str(socket_path),
            "--state-dir",
            str(demo.workdir / "agent-state"),
        ],
    )
    print(f"mesh-agent serving the node on {agent}")
    alpha_proc, alpha = demo.backend("alpha")
    _, beta = demo.backend("beta")
    print(f"backends: alpha on {alpha}, beta on {beta}")

    demo.say("describing service 'echo' with one endpoint (alpha)")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha)))
    demo.say(
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
    time.sleep(pause)
    demo.say("adding beta, with active health checks: traffic spreads over both endpoints")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha, beta)))
    time.sleep(pause)
    demo.say("alpha reports NOT_SERVING: the agent's checks mark it, traffic leaves it")
    alpha_proc.send_signal(signal.SIGUSR1)
    time.sleep(pause)
    demo.agent_health(agent)
    demo.say("alpha is healthy again: traffic returns")
    alpha_proc.send_signal(signal.SIGUSR2)
    time.sleep(pause)
    demo.say("both backends fail every call: the node's breaker opens, calls fail fast")
    for address in (alpha, beta):
        demo.configure(address, fail="UNAVAILABLE")
    time.sleep(pause)
    demo.say("the backends recover: after the open time a probe gets through, the breaker closes")
    for address in (alpha, beta):
        demo.configure(address)
    time.sleep(max(pause, 3.0))
    demo.say("the control server dies (SIGKILL): the node keeps working on the agent's cache")
    demo.kill("control")
    time.sleep(pause)
    demo.say("the control server comes back on the same address; the agent reconnects")
    control_args[3] = demo.control
    demo.ready("control", control_args)
    time.sleep(pause / 2)
    demo.say("a broken hand edit in the store directory is reported and ignored")
    good = (store / "echo.yaml").read_text()
    (store / "echo.yaml").write_text("name: echo\nendpoints: [{address: 'not an address'}]\n")
    time.sleep(pause / 2)
    demo.meshctl("status")
    time.sleep(pause / 2)
    demo.say("the operator puts the good file back: the problem clears")
    (store / "echo.yaml").write_text(good)
    time.sleep(pause / 2)
    demo.say("deleting the service: calls fail with UNAVAILABLE")
    demo.meshctl("delete", "service", "echo")
    time.sleep(pause / 2)
    demo.say("applying it again: calls succeed again")
    demo.meshctl("apply", "-f", str(demo.write_service(alpha, beta)))
    time.sleep(pause)
    demo.meshctl("status")
    if duration:
        return
    demo.say("the mesh keeps running; Ctrl-C stops it")
    while True:
        time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mesh-demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    parser.add_argument("--pause", type=float, default=4.0, help="seconds between steps")
    parser.add_argument("--once", action="store_true", help="stop after the scripted steps")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    demo = Demo(args.workdir)
    try:
        run(demo, args.pause, 1 if args.once else 0)
    except KeyboardInterrupt:
        pass
    finally:
        demo.say("stopping")
        demo.stop()


if __name__ == "__main__":
    main()
