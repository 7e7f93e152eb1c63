"""``meshctl``: the operator's command line for mesh-control.

Output meant for people goes to stdout; ``-o json`` / ``-o yaml`` print data for scripts.
Every failure exits non-zero with a one-line reason on stderr (``validate`` prints one line
per problem).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import yaml
from google.protobuf import json_format

from mesh.v1 import admin_pb2, admin_pb2_grpc

from . import __version__
from ._preflight import check_environment
from .admin import STORE_ERROR
from .config import load_path, service_to_dict
from .errors import ConfigError
from .xds.types import short_name

DEFAULT_CONTROL = "127.0.0.1:15010"


def _fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"meshctl: {message}\n")
    raise SystemExit(code)


def _stub(args: argparse.Namespace) -> admin_pb2_grpc.MeshAdminServiceStub:
    channel = grpc.insecure_channel(args.control)
    return admin_pb2_grpc.MeshAdminServiceStub(channel)


def _call(args: argparse.Namespace, method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=args.timeout)
    except grpc.RpcError as error:
        code = error.code()
        trailing: Any = error.trailing_metadata() or ()
        if any(item[0] == STORE_ERROR for item in trailing):
            _fail(f"mesh-control at {args.control} cannot reach its store: {error.details()}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            _fail(f"cannot reach mesh-control at {args.control}: {error.details()}")
        _fail(f"{code.name.lower().replace('_', ' ')}: {error.details()}")


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
                    f"under {GRPCIO_TIMEOUT_FLOOR_S:g}s: grpcio (1.85) clients start the route "
                    "timeout 1-2 s early and would fail every call (see README, Known limits)\n"
                )


def cmd_apply(args: argparse.Namespace) -> None:
    services = _load(args.file)
    _warn_about(services)
    if not services:
        _fail(f"no service documents in {args.file}")
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
            body = yaml.safe_dump(service_to_dict(stored.service), sort_keys=False)
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


def _age(stamp_seconds: int) -> str:
    seconds = max(0, int(time.time()) - stamp_seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cmd_status(args: argparse.Namespace) -> None:
    response = _call(args, _stub(args).GetStatus, admin_pb2.GetStatusRequest())
    if args.output == "json":
        print(
            json.dumps(
                json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2
            )
        )
        return
    streams = sum(1 for node in response.nodes if node.stream_id)
    print(
        f"server {response.server_id}: store revision {response.store_revision}, "
        f"serving snapshot of revision {response.snapshot_revision}, "
        f"{streams} node stream(s)"
    )
    rows = [("NODE", "TYPE", "SENT", "ACKED", "STATE", "CONNECTED", "LAST NACK")]
    for node in response.nodes:
        for t in node.types:
            if t.last_nack.message and t.last_nack.version == t.version_sent:
                state = "NACKED"
            elif t.version_sent and t.version_sent == t.version_acked:
                state = "ACKED"
            elif t.version_sent:
                state = "PENDING"
            else:
                state = "WAITING"
            nack = t.last_nack.message.replace("\n", " ")[:80] if t.last_nack.message else "-"
            rows.append(
                (
                    node.node_id,
                    short_name(t.type_url),
                    t.version_sent or "-",
                    t.version_acked or "-",
                    state,
                    _age(node.connected_since.seconds),
                    nack,
                )
            )
    if len(rows) > 1:
        _table(rows)
    _node_state_tables(response.nodes)
    for problem in response.store_problems:
        print(f"store problem: {problem.source}: {problem.message}")


def _node_state_tables(nodes: Sequence[admin_pb2.NodeStatus]) -> None:
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
            message = c.nack_message.replace("\n", " ")[:80]
            nack = f"{c.nack_version}: {message}" if c.nack_version else message
            nacks.append((node.node_id, c.client_id or "-", short_name(c.type_url), nack))
    for rows in (registered, nacks):
        if len(rows) > 1:
            print()
            _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshctl", description="Operate a mesh-control server.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--control",
        default=os.environ.get("MESH_CONTROL", DEFAULT_CONTROL),
        help="mesh-control HOST:PORT (default $MESH_CONTROL or %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
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

    status = sub.add_parser("status", help="connected nodes: what each was sent and ACKed")
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.set_defaults(func=cmd_status)
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
