"""``meshctl``: the operator's command line for mesh-control.

Output meant for people goes to stdout; ``-o json`` / ``-o yaml`` print data for scripts.
Every failure exits non-zero with a one-line reason on stderr (``validate`` prints one line
per problem).
"""

from __future__ import annotations

import os

# grpc's C core writes TLS handshake failures to stderr at INFO level; meshctl says in one line
# what failed instead. The variable is read when grpc is first imported, so it is set first.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from control import __version__, certs
from control.config import dump_yaml, load_path, service_to_dict
from control.security import TOKEN_KEY
from mesh.v1 import admin_pb2, admin_pb2_grpc, node_pb2
from mesh_core import tls
from mesh_core.errors import ConfigError, TlsError
from mesh_core.preflight import check_environment
from mesh_core.status import STORE_ERROR_KEY
from mesh_xds.types import short_name

DEFAULT_CONTROL = "127.0.0.1:15010"


def _fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"meshctl: {message}\n")
    raise SystemExit(code)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to mesh-control: mTLS with ``--tls-*`` (or ``$MESH_TLS_*``), else plaintext."""
    try:
        files = tls.from_values(args.tls_cert, args.tls_key, args.tls_ca)
    except TlsError as error:
        _fail(str(error), 2)
    if files is None:
        return grpc.insecure_channel(args.control)
    return grpc.secure_channel(args.control, tls.channel_credentials(files))


def _stub(args: argparse.Namespace) -> admin_pb2_grpc.MeshAdminServiceStub:
    return admin_pb2_grpc.MeshAdminServiceStub(_channel(args))


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The operator token, when ``--token-file`` (or ``$MESH_TOKEN_FILE``) names one."""
    if not args.token_file:
        return ()
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as error:
        _fail(f"cannot read --token-file {args.token_file}: {error.strerror}", 2)
    return ((TOKEN_KEY, f"Bearer {token}"),)


def _error_message(args: argparse.Namespace, error: Any) -> str:
    """One line saying why a call to mesh-control failed."""
    code = error.code()
    trailing: Any = error.trailing_metadata() or ()
    if any(item[0] == STORE_ERROR_KEY for item in trailing):
        return f"mesh-control at {args.control} cannot reach its store: {error.details()}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = error.details() or code.name
        return f"cannot reach mesh-control at {args.control}: {details}; {_hint(args, details)}"
    return f"{code.name.lower().replace('_', ' ')}: {error.details()}"


TLS_FLAGS = "--tls-cert, --tls-key and --tls-ca (or $MESH_TLS_CERT, $MESH_TLS_KEY, $MESH_TLS_CA)"


def _hint(args: argparse.Namespace, details: str) -> str:
    """What the operator can do about a connection that failed with ``details``."""
    text = details.lower()
    tls = args.tls_cert is not None
    if "connection refused" in text or "name resolution" in text or "dns" in text:
        return (
            "is mesh-control running there? Give its address with --control HOST:PORT or "
            "$MESH_CONTROL"
        )
    if "wrong_version_number" in text:
        return "the server does not speak TLS: leave out " + TLS_FLAGS
    if "hostname verification" in text or "peer name" in text:
        return (
            f"the server's certificate does not name {args.control.rpartition(':')[0]}: "
            "connect to a name or IP address among its SANs"
        )
    if "certificate_verify_failed" in text or "unable to get local issuer" in text:
        return f"the server's certificate is not signed by the CA in --tls-ca {args.tls_ca}"
    if tls:
        return (
            f"the server may have refused the client certificate {args.tls_cert} (it must be "
            "issued by the CA the server trusts), or it is not mesh-control"
        )
    return (
        "if the server requires mTLS (mesh-control serve --tls-*), give this client "
        "a certificate with " + TLS_FLAGS
    )


def _call(args: argparse.Namespace, method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=args.timeout, metadata=_metadata(args))
    except grpc.RpcError as error:
        _fail(_error_message(args, error))


def _load(path: str) -> list[Any]:
    try:
        return load_path(Path(path))
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(f"{problem}\n")
        _fail(f"{len(error.problems)} problem(s) in {path}; nothing applied")
    except OSError as error:
        _fail(f"cannot read {path}: {error.strerror}")


# grpcio measures route timeouts from a start 1-2 s in the past (README, "Known limits").
GRPCIO_TIMEOUT_FLOOR_S = 2.0


def _warn_about(services: Sequence[Any]) -> None:
    for service in services:
        if service.policy.HasField("timeout"):
            seconds = service.policy.timeout.ToNanoseconds() / 1e9
            if seconds < GRPCIO_TIMEOUT_FLOOR_S:
                sys.stderr.write(
                    f"meshctl: warning: service/{service.name}: policy.timeout {seconds:g}s is "
                    f"under {GRPCIO_TIMEOUT_FLOOR_S:g}s: raw grpcio (1.85) xds:/// channels "
                    "start the route timeout 1-2 s early and would fail every call; "
                    "mesh_channel() is not affected (see README, Policy timeouts)\n"
                )


def cmd_apply(args: argparse.Namespace) -> None:
    services = _load(args.file)
    _warn_about(services)
    response = _call(
        args,
        _stub(args).ApplyServices,
        admin_pb2.ApplyServicesRequest(services=services, if_revision=args.if_revision),
    )
    for applied in response.services:
        state = "configured" if applied.changed else "unchanged"
        print(f"service/{applied.name} {state} (revision {applied.revision})")


def _stored_dict(stored: admin_pb2.StoredService) -> dict[str, Any]:
    return {"revision": stored.revision, "service": service_to_dict(stored.service)}


def cmd_get(args: argparse.Namespace) -> None:
    response = _call(
        args, _stub(args).GetServices, admin_pb2.GetServicesRequest(name=args.name or "")
    )
    if args.output == "json":
        print(
            json.dumps(
                {
                    "revision": response.revision,
                    "services": [_stored_dict(s) for s in response.services],
                },
                indent=2,
            )
        )
        return
    if args.output == "yaml":
        documents = []
        for stored in response.services:
            body = dump_yaml(service_to_dict(stored.service))
            documents.append(f"# revision: {stored.revision}\n{body}")
        sys.stdout.write("---\n".join(documents))
        return
    rows = [("NAME", "ENDPOINTS", "REVISION")]
    for stored in response.services:
        rows.append((stored.service.name, str(len(stored.service.endpoints)), str(stored.revision)))
    _table(rows)


def cmd_delete(args: argparse.Namespace) -> None:
    response = _call(
        args, _stub(args).DeleteService, admin_pb2.DeleteServiceRequest(name=args.name)
    )
    print(f"service/{args.name} deleted (revision {response.revision})")


def cmd_validate(args: argparse.Namespace) -> None:
    failed = False
    for path in args.file:
        try:
            services = load_path(Path(path))
        except ConfigError as error:
            failed = True
            for problem in error.problems:
                print(problem)
            continue
        except OSError as error:
            failed = True
            print(f"{path}: cannot read: {error.strerror}")
            continue
        _warn_about(services)
        for service in services:
            print(f"{path}: service/{service.name} valid")
    if failed:
        _fail("validation failed")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age(stamp_seconds: int) -> str:
    return _duration(time.time() - stamp_seconds)


def _type_state(t: admin_pb2.TypeStatus) -> str:
    if t.last_nack.message and t.last_nack.version == t.version_sent:
        return "NACKED"
    if t.version_sent and t.version_sent == t.version_acked:
        return "ACKED"
    if t.version_sent:
        return "PENDING"
    return "WAITING"


def _by_node(nodes: Sequence[admin_pb2.NodeStatus]) -> dict[str, list[admin_pb2.NodeStatus]]:
    """The entries of each node id (one per stream, or one without a stream), in order."""
    grouped: dict[str, list[admin_pb2.NodeStatus]] = {}
    for node in nodes:
        grouped.setdefault(node.node_id, []).append(node)
    return grouped


def _config_state(
    response: admin_pb2.GetStatusResponse, entries: Sequence[admin_pb2.NodeStatus]
) -> str:
    """latest (every type sent is ACKed, nothing left to push), NACKED, PENDING or no stream."""
    streams = [e for e in entries if e.stream_id]
    if not streams:
        return "no stream"
    states = {_type_state(t) for e in streams for t in e.types}
    if "NACKED" in states:
        return "NACKED"
    if "PENDING" in states or response.store_revision != response.snapshot_revision:
        return "PENDING"
    return "latest"


def _health_of(entries: Sequence[admin_pb2.NodeStatus]) -> node_pb2.NodeHealth | None:
    return next((e.health for e in entries if e.HasField("health")), None)


def _health_text(health: node_pb2.NodeHealth | None) -> str:
    if health is None:
        return "-"
    down = [f"{c.name}: {c.state}" for c in health.components if c.state != "running"]
    return f"{health.status} ({', '.join(down)})" if down else health.status or "-"


def _utc(stamp: Any) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp.seconds))


def _one_line(text: str, limit: int = 80) -> str:
    return text.replace("\n", " ")[:limit]


def _status_lines(response: admin_pb2.GetStatusResponse) -> list[str]:
    """``meshctl status`` as text: the header, the tables, store problems and a summary."""
    streams = sum(1 for node in response.nodes if node.stream_id)
    lines = [
        f"server {response.server_id}: store revision {response.store_revision}, "
        f"serving snapshot of revision {response.snapshot_revision}, "
        f"{streams} node stream(s)"
    ]
    rows = [("NODE", "TYPE", "SENT", "ACKED", "STATE", "CONNECTED", "LAST NACK")]
    for node in response.nodes:
        for t in node.types:
            nack = _one_line(t.last_nack.message) if t.last_nack.message else "-"
            rows.append(
                (
                    node.node_id,
                    short_name(t.type_url),
                    t.version_sent or "-",
                    t.version_acked or "-",
                    _type_state(t),
                    _age(node.connected_since.seconds),
                    nack,
                )
            )
    if len(rows) > 1:
        lines += _table_lines(rows)
    lines += _health_tables(response)
    lines += _node_state_tables(response.nodes)
    for problem in response.store_problems:
        lines.append(f"store problem: {problem.source}: {problem.message}")
    lines += ["", _summary(response)]
    return lines


def _health_tables(response: admin_pb2.GetStatusResponse) -> list[str]:
    """Per node: config state and agent health; the components not running; the breakers
    not closed."""
    nodes = [("NODE", "CONFIG", "HEALTH")]
    components = [("NODE", "COMPONENT", "STATE", "RESTARTS", "LAST ERROR")]
    breakers = [("NODE", "SERVICE", "STATE", "OPEN UNTIL", "LEFT", "SINCE", "REASON")]
    now = time.time()
    for node_id, entries in _by_node(response.nodes).items():
        health = _health_of(entries)
        nodes.append((node_id, _config_state(response, entries), _health_text(health)))
        if health is None:
            continue
        for c in health.components:
            if c.state != "running":
                error = _one_line(c.last_error) if c.last_error else "-"
                components.append((node_id, c.name, c.state, str(c.restarts), error))
        for b in health.breakers:
            is_open = b.HasField("open_until")
            breakers.append(
                (
                    node_id,
                    b.service,
                    b.state,
                    _utc(b.open_until) if is_open else "-",
                    _duration(b.open_until.seconds - now) if is_open else "-",
                    _age(b.since.seconds) if b.HasField("since") else "-",
                    b.reason or "-",
                )
            )
    lines: list[str] = []
    for rows in (nodes, components, breakers):
        if len(rows) > 1:
            lines += ["", *_table_lines(rows)]
    return lines


def _summary(response: admin_pb2.GetStatusResponse) -> str:
    grouped = _by_node(response.nodes)
    states = {node_id: _config_state(response, e) for node_id, e in grouped.items()}
    healths = [_health_of(e) for e in grouped.values()]
    latest = sum(1 for s in states.values() if s == "latest")
    nacked = sum(1 for s in states.values() if s == "NACKED")
    streamless = sum(1 for s in states.values() if s == "no stream")
    not_serving = sum(1 for h in healths if h is not None and h.status != "SERVING")
    breakers = sum(1 for h in healths if h is not None and h.breakers)
    return (
        f"{len(grouped)} node(s): {latest} on the latest config, {nacked} NACKed, "
        f"{not_serving} not serving, {breakers} with open breakers, {streamless} without a stream"
    )


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_document(message: Message) -> dict[str, Any]:
    """``message`` as JSON data for scripts: every field present (an empty list, 0, "",
    false, or null for a message that is not set), 64-bit integers as numbers (protobuf's
    JSON mapping writes them as strings), timestamps as RFC 3339 text, enums by name."""
    document = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _filled(message, document)


def _filled(message: Message, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` completed as :func:`message_document` says, in the fields' order."""
    out: dict[str, Any] = {}
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    for fd in fields:
        value = getattr(message, fd.name)
        data: Any = document.get(fd.name)
        if fd.type in _INT64_TYPES:
            data = [int(v) for v in value] if fd.is_repeated else int(value)
        elif fd.type != FieldDescriptor.TYPE_MESSAGE or fd.message_type.GetOptions().map_entry:
            pass
        elif fd.is_repeated:
            if not fd.message_type.full_name.startswith("google.protobuf."):
                data = [_filled(item, d) for item, d in zip(value, data, strict=True)]
        elif not message.HasField(fd.name):
            data = None
        elif not fd.message_type.full_name.startswith("google.protobuf."):
            data = _filled(value, data)
        out[fd.name] = data
    return out


def _status_json(response: admin_pb2.GetStatusResponse, indent: int | None) -> str:
    document = message_document(response)
    return json.dumps(document, indent=indent, separators=None if indent else (",", ":"))


def cmd_status(args: argparse.Namespace) -> None:
    if args.watch:
        _watch_status(args)
        return
    response = _call(args, _stub(args).GetStatus, admin_pb2.GetStatusRequest())
    if args.output == "json":
        print(_status_json(response, indent=2))
        return
    print("\n".join(_status_lines(response)))


def _watch_status(args: argparse.Namespace) -> None:
    """Redraws the status every ``args.interval`` seconds until Ctrl-C. On a terminal the
    screen is cleared first; otherwise each refresh starts with a separator line. With
    ``-o json``, one compact document per line. An unreachable server is an error line (on
    stderr with ``-o json``), and the next refresh tries again."""
    terminal = sys.stdout.isatty()
    channel: grpc.Channel | None = None
    try:
        while True:
            if channel is None:
                channel = _channel(args)
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            response: admin_pb2.GetStatusResponse | None = None
            message = ""
            try:
                response = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=args.timeout)
            except grpc.RpcError as error:
                message = f"meshctl: {_error_message(args, error)}"
                channel.close()  # a new channel reconnects at once, without grpc's backoff
                channel = None
            if args.output == "json":
                if response is None:
                    sys.stderr.write(f"{message}\n")
                    sys.stderr.flush()
                else:
                    sys.stdout.write(f"{_status_json(response, indent=None)}\n")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                lines = [f"--- {stamp}, every {args.interval:g}s (Ctrl-C to stop) ---"]
                lines += [message] if response is None else _status_lines(response)
                clear = "\x1b[H\x1b[2J" if terminal else ""
                sys.stdout.write(clear + "\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if channel is not None:
            channel.close()


def _node_state_tables(nodes: Sequence[admin_pb2.NodeStatus]) -> list[str]:
    """Registrations per node, and the local clients that rejected config. A node with
    several streams is listed in several NodeStatus entries with the same node state."""
    registered = [("NODE", "SERVICE", "ADDRESS", "DRAINING")]
    nacks = [("NODE", "CLIENT", "TYPE", "NACK")]
    seen: set[str] = set()
    for node in nodes:
        if node.node_id in seen:
            continue
        seen.add(node.node_id)
        for r in node.registrations:
            registered.append((node.node_id, r.service, r.address, "yes" if r.draining else "no"))
        for c in node.local_clients:
            if not c.nack_message:
                continue
            message = _one_line(c.nack_message)
            nack = f"{c.nack_version}: {message}" if c.nack_version else message
            nacks.append((node.node_id, c.client_id or "-", short_name(c.type_url), nack))
    lines: list[str] = []
    for rows in (registered, nacks):
        if len(rows) > 1:
            lines += ["", *_table_lines(rows)]
    return lines


def _table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _table(rows: Sequence[Sequence[str]]) -> None:
    print("\n".join(_table_lines(rows)))


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshctl", description="Operate a mesh-control server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--control",
        default=os.environ.get("MESH_CONTROL", DEFAULT_CONTROL),
        help="mesh-control HOST:PORT (default $MESH_CONTROL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    env = os.environ.get
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=env("MESH_TLS_CERT") or None,
        help="client certificate for mTLS (default $MESH_TLS_CERT); an operator's to write",
    )
    parser.add_argument(
        "--tls-key", type=Path, default=env("MESH_TLS_KEY") or None, help="its key ($MESH_TLS_KEY)"
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=env("MESH_TLS_CA") or None,
        help="the mesh CA certificate ($MESH_TLS_CA)",
    )
    parser.add_argument(
        "--token-file",
        default=env("MESH_TOKEN_FILE") or None,
        help="operator token file for a server with --operator-token-file ($MESH_TOKEN_FILE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    apply = sub.add_parser("apply", help="create or update services from a file or directory")
    apply.add_argument("-f", "--file", required=True, help="YAML/JSON file or directory")
    apply.add_argument(
        "--if-revision",
        type=int,
        default=0,
        help="refuse if a service changed since this store revision",
    )
    apply.set_defaults(func=cmd_apply)

    get = sub.add_parser("get", help="show stored services")
    get.add_argument("kind", choices=["services", "service", "svc"])
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    get.set_defaults(func=cmd_get)

    delete = sub.add_parser("delete", help="delete a service")
    delete.add_argument("kind", choices=["service", "services", "svc"])
    delete.add_argument("name")
    delete.set_defaults(func=cmd_delete)

    validate = sub.add_parser("validate", help="check files without a server")
    validate.add_argument("-f", "--file", required=True, action="append", help="file or directory")
    validate.set_defaults(func=cmd_validate)

    status = sub.add_parser(
        "status",
        help="nodes: what each was sent and ACKed, agent health, open breakers",
        description=(
            "Per node: versions sent and ACKed per type, last NACK, the agent's health and "
            "the breakers not closed; a last line sums it up. A node is on the latest config "
            "when every type sent is ACKed and the store revision is served; NACKed counts "
            "nodes whose own stream rejected the version sent (local processes' NACKs are "
            "listed in their own table)."
        ),
    )
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.add_argument(
        "-w", "--watch", action="store_true", help="redraw until Ctrl-C (-o json: one per line)"
    )
    status.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        help="seconds between refreshes with --watch (default %(default)s)",
    )
    status.set_defaults(func=cmd_status)
    certs.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_environment("meshctl")
    try:
        args.func(args)
    except BrokenPipeError:
        sys.stderr.close()


if __name__ == "__main__":
    main()
