"""``mesh-agent``: the node agent's command line.

Every flag can also come from ``--config FILE`` (YAML, keys named like the flags with
underscores: ``control``, ``node_id``, ``zone``, ``socket``, ``listen``, ``state_dir``,
``metrics_port``, ``metrics_host``, plus ``registrations``: a list of
``{service, address, zone, weight, metadata}``); flags given on the command line win.
Telemetry export is set by the standard ``OTEL_*`` variables (see ``control.telemetry``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog
import yaml
from google.protobuf import json_format

from control import telemetry
from control._logging import configure
from control._preflight import check_environment
from mesh.v1 import node_pb2

from . import __version__
from .agent import DEFAULT_SOCKET, DEFAULT_STATE_DIR, Agent, AgentSettings
from .api import registration_problems

log = structlog.get_logger(__name__)
CONFIG_KEYS = {
    "control",
    "node_id",
    "zone",
    "cluster",
    "socket",
    "listen",
    "state_dir",
    "registrations",
    "metrics_port",
    "metrics_host",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh-agent", description="The mesh's node agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, help="YAML file with any of the settings below")
    run.add_argument("--control", help="control servers, HOST:PORT[,HOST:PORT...] (failover)")
    run.add_argument("--node-id", help="this node's id (default: the host name)")
    run.add_argument("--zone", help="this node's zone")
    run.add_argument("--cluster", help="this node's cluster (xDS node.cluster)")
    run.add_argument("--socket", help=f"unix socket for local processes ({DEFAULT_SOCKET})")
    run.add_argument("--listen", help="also serve on this loopback HOST:PORT (port 0 picks one)")
    run.add_argument("--state-dir", type=Path, help=f"where state persists ({DEFAULT_STATE_DIR})")
    run.add_argument("--ready-file", type=Path, help="write the bound addresses once serving")
    run.add_argument("--log-level", default=None)
    telemetry.add_arguments(run)
    return parser


def _fail(message: str) -> None:
    sys.stderr.write(f"mesh-agent: {message}\n")
    raise SystemExit(2)


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file's settings (empty without one); exits naming what is wrong."""
    config: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            _fail(f"cannot read config file {args.config}: {error}")
        if not isinstance(loaded, dict):
            _fail(f"{args.config}: expected a mapping of settings")
        unknown = sorted(set(loaded) - CONFIG_KEYS)
        if unknown:
            _fail(
                f"{args.config}: unknown setting(s) {', '.join(unknown)}; "
                f"known are {', '.join(sorted(CONFIG_KEYS))}"
            )
        config = loaded
    return config


def settings_from(args: argparse.Namespace, config: dict[str, Any] | None = None) -> AgentSettings:
    config = load_config(args) if config is None else config

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else config.get(name, default)

    control = pick("control")
    if not control:
        _fail("--control HOST:PORT is required (or `control` in --config)")
    servers = control if isinstance(control, list) else str(control).split(",")
    registrations = []
    for index, body in enumerate(config.get("registrations") or []):
        try:
            registration = json_format.ParseDict(body, node_pb2.Registration())
        except (json_format.ParseError, TypeError) as error:
            _fail(f"{args.config}: registrations[{index}]: {error}")
        problems = registration_problems(registration)
        if problems:
            _fail(f"{args.config}: registrations[{index}]: {'; '.join(problems)}")
        registrations.append(registration)
    state_dir = pick("state_dir", DEFAULT_STATE_DIR)
    return AgentSettings(
        control=[s.strip() for s in servers if s.strip()],
        node_id=pick("node_id") or socket.gethostname(),
        zone=pick("zone", ""),
        cluster=pick("cluster", ""),
        socket=pick("socket", DEFAULT_SOCKET),
        listen=pick("listen", ""),
        state_dir=Path(state_dir),
        registrations=registrations,
    )


async def _run(settings: AgentSettings, ready_file: Path | None) -> None:
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await agent.start()
    if ready_file is not None:
        tmp = ready_file.with_name(f".{ready_file.name}.tmp")
        tmp.write_text("\n".join(agent.addresses) + "\n")
        os.replace(tmp, ready_file)
    await stop.wait()
    log.info("shutting down")
    await agent.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    check_environment("mesh-agent")
    config = load_config(args)
    settings = settings_from(args, config)
    structlog.contextvars.bind_contextvars(node_id=settings.node_id)
    port = args.metrics_port if args.metrics_port is not None else config.get("metrics_port")
    if port is not None and not isinstance(port, int):
        _fail(f"{args.config}: metrics_port: expected a port number, got {port!r}")
    otel = telemetry.start(
        "mesh-agent", "mesh-agent", port, args.metrics_host or config.get("metrics_host")
    )
    try:
        asyncio.run(_run(settings, args.ready_file))
    except OSError as error:
        _fail(str(error))
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
