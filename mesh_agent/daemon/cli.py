"""``mesh-agent``: the node agent's command line.

Every flag can also come from ``--config FILE`` (YAML, keys named like the flags with
underscores: ``control``, ``node_id``, ``zone``, ``socket``, ``socket_mode`` (octal, as
written: ``0660``), ``socket_owner``, ``socket_group``, ``listen``, ``listen_allow`` (a list),
``state_dir``, ``metrics_port``, ``metrics_host``, ``tls_cert``, ``tls_key``, ``tls_ca``,
``xds_protocol``, ``panic_threshold``, ``identities`` (a list), ``certs_dir``, plus
``registrations``: a list of ``{service, address, zone, weight, metadata}``); flags given on
the command line win.

Service identities: with mTLS the agent holds a certificate for every service it registered
endpoints of whose ``security.hosts`` the control server finds this node in, and for each
``--identity NAME`` (repeatable: for a process that only calls), under ``--certs-dir`` (by
default ``identities/`` in the state dir; the layout is :mod:`mesh_core.identity_files`).

With mTLS (``--tls-cert``, ``--tls-key``, ``--tls-ca``, the node's certificate) the ``--listen``
TCP listener admits only callers whose certificate names the node itself
(``spiffe://TD/node/ID``) or an identity given with ``--listen-allow SPIFFE_ID`` (repeatable;
full SPIFFE IDs such as ``spiffe://mesh.local/operator/alice``); anyone else gets
PERMISSION_DENIED and a warning in the agent's log. ``grpc.health.v1`` is open to any
certificate of the mesh CA, and the unix socket to anyone its file mode lets in.
Telemetry export is set by the standard ``OTEL_*`` variables (see ``mesh_core.telemetry``).
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import os
import pwd
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import structlog

from mesh.v1 import node_pb2
from mesh_agent import __version__
from mesh_agent.daemon.agent import Agent
from mesh_agent.daemon.api import registration_problems
from mesh_agent.daemon.health.table import DEFAULT_PANIC_THRESHOLD
from mesh_agent.daemon.settings import DEFAULT_SOCKET, DEFAULT_STATE_DIR, AgentSettings
from mesh_agent.daemon.upstream.client import PROTOCOLS
from mesh_core import telemetry, tls
from mesh_core.errors import MeshError, TlsError
from mesh_core.identity import NODE, parse_uri
from mesh_core.logs import configure
from mesh_core.preflight import check_environment
from mesh_core.validation import service_name_problem

log = structlog.get_logger(__name__)
CONFIG_KEYS = {
    "control",
    "node_id",
    "zone",
    "cluster",
    "socket",
    "socket_mode",
    "socket_owner",
    "socket_group",
    "listen",
    "listen_allow",
    "state_dir",
    "registrations",
    "metrics_port",
    "metrics_host",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "xds_protocol",
    "panic_threshold",
    "identities",
    "certs_dir",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh-agent", description="The mesh's node agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", type=Path, help="YAML file with any of the settings below")
    run.add_argument("--control", help="control servers, HOST:PORT[,HOST:PORT...] (failover)")
    run.add_argument("--node-id", help="this node's id (default: the host name)")
    run.add_argument(
        "--zone",
        help="this node's zone: calls go to the endpoints in it first (and endpoints it "
        "registers without a zone are in it)",
    )
    run.add_argument(
        "--panic-threshold",
        type=float,
        help="ignore the health checks of a service when every one of its zones has fewer "
        "than this fraction of usable endpoints (0 to 1; default 0.5)",
    )
    run.add_argument("--cluster", help="this node's cluster (xDS node.cluster)")
    run.add_argument("--socket", help=f"unix socket for local processes ({DEFAULT_SOCKET})")
    run.add_argument(
        "--socket-mode", metavar="MODE", help="the unix socket's mode, in octal (default 0660)"
    )
    run.add_argument(
        "--socket-owner", metavar="USER", help="the unix socket's owner, a user name or uid"
    )
    run.add_argument(
        "--socket-group", metavar="GROUP", help="the unix socket's group, a group name or gid"
    )
    run.add_argument("--listen", help="also serve on this loopback HOST:PORT (port 0 picks one)")
    run.add_argument(
        "--listen-allow",
        metavar="SPIFFE_ID",
        action="append",
        help="with mTLS, an identity besides the node's own that may use the --listen "
        "listener, e.g. spiffe://mesh.local/operator/alice (repeatable)",
    )
    run.add_argument("--state-dir", type=Path, help=f"where state persists ({DEFAULT_STATE_DIR})")
    run.add_argument("--ready-file", type=Path, help="write the bound addresses once serving")
    run.add_argument("--log-level", default=None)
    run.add_argument(
        "--xds-protocol",
        choices=PROTOCOLS,
        help="upstream xDS: auto (delta where the control server offers it, the default), "
        "delta or sotw",
    )
    run.add_argument(
        "--identity",
        metavar="SERVICE",
        action="append",
        dest="identities",
        help="also hold this service's identity (a certificate for "
        "spiffe://TD/service/SERVICE, if its security.hosts name this node), for a process "
        "that calls as it without registering (repeatable; needs mTLS)",
    )
    run.add_argument(
        "--certs-dir",
        type=Path,
        help="where the service identities' files go (default: identities/ in the state dir)",
    )
    telemetry.add_arguments(run)
    tls.add_arguments(run, role="node (a node certificate from `meshctl certs issue --node`)")
    return parser


def identities(value: Any, where: str, files: tls.TlsFiles | None) -> list[str]:
    """The service names of ``--identity``/``identities``, only with mTLS (the control server
    signs for a node it knows by its certificate); exits naming what is wrong."""
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"{where}: expected a list of service names, got {value!r}")
    if value and files is None:
        _fail(
            f"{where} needs mTLS (--tls-cert, --tls-key, --tls-ca): the control server signs "
            "an identity only for a node whose certificate it checked"
        )
    for item in value:
        problem = service_name_problem(item) if isinstance(item, str) else "not a string"
        if problem:
            _fail(f"{where}: {item!r}: {problem}")
    return list(dict.fromkeys(str(item) for item in value))


def xds_protocol(value: Any, args: argparse.Namespace) -> str:
    if value not in PROTOCOLS:
        _fail(f"{args.config}: xds_protocol: expected one of {', '.join(PROTOCOLS)}, got {value!r}")
    return str(value)


def tls_settings(
    files: tls.TlsFiles | None, node_id: str | None
) -> tuple[tls.TlsFiles | None, str | None]:
    """Checks the node's certificate names the node (``spiffe://TD/node/ID``); the node id
    defaults to the one it names."""
    if files is None:
        return None, node_id
    named = [p[2] for u in tls.certificate_uris(files) if (p := parse_uri(u)) and p[1] == NODE]
    if not named:
        _fail(f"--tls-cert {files.cert}: not a node certificate (no spiffe://…/node/ID URI SAN)")
    if node_id is not None and node_id != named[0]:
        _fail(
            f"--node-id {node_id!r} does not match the certificate, which identifies node "
            f"{named[0]!r}; the control server would refuse the node"
        )
    return files, named[0]


def listen_allow(value: Any, where: str, files: tls.TlsFiles | None) -> list[str]:
    """The identities of ``--listen-allow``/``listen_allow``: full SPIFFE IDs, and only with
    mTLS (without it a caller has no identity to check); exits otherwise."""
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(f"{where}: expected a list of SPIFFE IDs, got {value!r}")
    if value and files is None:
        _fail(
            f"{where} needs mTLS on the listener (--tls-cert, --tls-key, --tls-ca): without "
            "certificates a caller has no identity to check"
        )
    for item in value:
        if not isinstance(item, str) or parse_uri(item) is None:
            example = _example(item, files)
            _fail(f"{where}: {item!r} is not a SPIFFE ID; give it in full, as in {example}")
    return [str(item) for item in value]


def _example(item: Any, files: tls.TlsFiles | None) -> str:
    """A SPIFFE ID in the agent's trust domain, for a short form such as ``operator/alice``."""
    domains = [p[0] for u in tls.certificate_uris(files) if (p := parse_uri(u))] if files else []
    domain = domains[0] if domains else "mesh.local"
    guess = f"spiffe://{domain}/{str(item).strip('/')}"
    return guess if parse_uri(guess) else f"spiffe://{domain}/operator/NAME"


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"mesh-agent: {message}\n")
    raise SystemExit(2)


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config`` file's settings (empty without one); exits naming what is wrong."""
    config: dict[str, Any] = {}
    if args.config is not None:
        import yaml  # only a run with --config reads YAML

        try:
            text = args.config.read_text()
            loaded = yaml.safe_load(text) or {}
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
        if isinstance(loaded.get("socket_mode"), int):
            # YAML reads 660 as decimal and 0660 as octal; a mode is meant as written.
            loaded["socket_mode"] = _scalar_text(text, "socket_mode")
        config = loaded
    return config


def _scalar_text(text: str, key: str) -> str | None:
    """The text of the top-level ``key``'s value in the YAML document ``text``, as written."""
    import yaml

    node = yaml.compose(text)
    if isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            if name.value == key and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return None


def _where(args: argparse.Namespace, name: str) -> str:
    """How the user gave setting ``name``: the flag, or the key in the config file."""
    if getattr(args, name, None) is not None:
        return f"--{name.replace('_', '-')}"
    return f"{args.config}: {name}"


def socket_mode(value: Any, where: str) -> int:
    """A file mode from octal text (``0660``, ``660``, ``0o660``) or an int; exits otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            _fail(f"{where}: {value!r} is not an octal file mode such as 0660")
    if not 0 <= mode <= 0o777:
        _fail(f"{where}: {value!r} is not a file mode (0000-0777) such as 0660")
    return mode


def _account_id(value: Any, where: str, kind: str, lookup: Callable[[str], int]) -> int | None:
    """The id of a user or group given by name or number (None when not given); exits if
    unknown."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return lookup(text)
    except KeyError:
        _fail(f"{where}: unknown {kind} {text!r}")
    return None


def socket_owner_id(value: Any, where: str) -> int | None:
    """The uid of a user name or numeric id (None when not given); exits if unknown."""
    return _account_id(value, where, "user", lambda name: pwd.getpwnam(name).pw_uid)


def socket_group_id(value: Any, where: str) -> int | None:
    """The gid of a group name or numeric id (None when not given); exits if unknown."""
    return _account_id(value, where, "group", lambda name: grp.getgrnam(name).gr_gid)


def settings_from(args: argparse.Namespace, config: dict[str, Any] | None = None) -> AgentSettings:
    config = load_config(args) if config is None else config

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else config.get(name, default)

    control = pick("control")
    if not control:
        _fail("--control HOST:PORT is required (or `control` in --config)")
    try:
        given = tls.from_values(
            *(Path(v) if (v := pick(f"tls_{part}")) else None for part in ("cert", "key", "ca"))
        )
    except TlsError as error:
        _fail(str(error))
    files, node_id = tls_settings(given, pick("node_id"))
    servers = control if isinstance(control, list) else str(control).split(",")
    registrations = []
    for index, body in enumerate(config.get("registrations") or []):
        from google.protobuf import json_format  # only for registrations given

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
        node_id=node_id or socket.gethostname(),
        zone=pick("zone", ""),
        cluster=pick("cluster", ""),
        socket=pick("socket", DEFAULT_SOCKET),
        socket_mode=socket_mode(pick("socket_mode", "0660"), _where(args, "socket_mode")),
        socket_owner=socket_owner_id(pick("socket_owner"), _where(args, "socket_owner")),
        socket_group=socket_group_id(pick("socket_group"), _where(args, "socket_group")),
        listen=pick("listen", ""),
        listen_allow=listen_allow(pick("listen_allow"), _where(args, "listen_allow"), files),
        state_dir=Path(state_dir),
        registrations=registrations,
        tls=files,
        xds_protocol=xds_protocol(pick("xds_protocol", "auto"), args),
        panic_threshold=panic_threshold(pick("panic_threshold", DEFAULT_PANIC_THRESHOLD), args),
        identities=identities(
            pick("identities"),
            "--identity" if args.identities is not None else f"{args.config}: identities",
            files,
        ),
        certs_dir=Path(certs) if (certs := pick("certs_dir")) else None,
    )


def panic_threshold(value: Any, args: argparse.Namespace) -> float:
    """``--panic-threshold`` (or ``panic_threshold`` in the config file): a fraction."""
    where = "--panic-threshold" if args.panic_threshold is not None else "panic_threshold"
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        _fail(f"{where} must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= threshold <= 1.0:
        _fail(f"{where} must be between 0 and 1, got {threshold}")
    return threshold


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
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(agent.failure())
    await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failing.cancel()
    log.info("shutting down")
    await agent.stop()
    log.info("stopped")
    if failing.done() and not failing.cancelled():
        raise failing.result()  # a component that cannot run: the agent exits with its error


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
    except (OSError, MeshError) as error:
        _fail(str(error))
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
