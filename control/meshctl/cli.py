"""``meshctl``'s parser and entry point."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from control import __version__
from control.meshctl import certs as certs_cli
from control.meshctl.commands import (
    cmd_apply,
    cmd_delete,
    cmd_get,
    cmd_status,
    cmd_validate,
    positive_seconds,
)
from control.meshctl.connection import DEFAULT_CONTROL
from control.meshctl.history import cmd_audit, cmd_diff, cmd_history, cmd_rollback, period
from control.meshctl.top import cmd_top
from mesh_core.preflight import check_environment


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
    apply.add_argument("-m", "--message", help="why: kept in the history and the audit trail")
    apply.set_defaults(func=cmd_apply)

    get = sub.add_parser("get", help="show stored services")
    get.add_argument("kind", choices=["services", "service", "svc"])
    get.add_argument("name", nargs="?", help="one service: its row, then its subsets and routes")
    get.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    get.set_defaults(func=cmd_get)

    delete = sub.add_parser("delete", help="delete a service")
    delete.add_argument("kind", choices=["service", "services", "svc"])
    delete.add_argument("name")
    delete.add_argument(
        "--if-revision", type=int, default=0, help="refuse if it changed since this store revision"
    )
    delete.add_argument("-m", "--message", help="why: kept in the history and the audit trail")
    delete.set_defaults(func=cmd_delete)

    history = sub.add_parser(
        "history",
        help="a service's kept versions: revision, time, who, action, message, what changed",
    )
    history.add_argument("service")
    history.add_argument("-o", "--output", choices=["table", "json"], default="table")
    history.set_defaults(func=cmd_history)

    diff = sub.add_parser(
        "diff",
        help="what changed between two versions of a service, or what applying a file would do",
        description=(
            "Field by field. With SERVICE: from --from (default: the version before --to) to "
            "--to (default: what is live), revisions from `meshctl history`. With -f FILE: "
            "what is live against the file's services (nothing is written)."
        ),
    )
    diff.add_argument("service", nargs="?")
    diff.add_argument("--from", dest="from_revision", type=int, default=0, help="a revision")
    diff.add_argument("--to", dest="to_revision", type=int, default=0, help="a revision")
    diff.add_argument("-f", "--file", help="YAML/JSON file or directory to compare with live")
    diff.add_argument("-o", "--output", choices=["text", "json"], default="text")
    diff.set_defaults(func=cmd_diff)

    rollback = sub.add_parser(
        "rollback",
        help="apply a version from a service's history as a new revision (also a deleted one)",
    )
    rollback.add_argument("service")
    rollback.add_argument(
        "--to", dest="to_revision", type=int, required=True, help="the revision to bring back"
    )
    rollback.add_argument(
        "--if-revision",
        type=int,
        default=0,
        help="refuse if the service changed since this store revision",
    )
    rollback.add_argument("-m", "--message", help="why (default: rollback to revision N)")
    rollback.add_argument("-o", "--output", choices=["text", "json"], default="text")
    rollback.set_defaults(func=cmd_rollback)

    audit = sub.add_parser("audit", help="admin writes, done and refused, with who and from where")
    audit.add_argument("--since", type=period, help="only the last period: 1h, 30m, 2d...")
    audit.add_argument("--service", help="only writes naming this service")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")
    audit.set_defaults(func=cmd_audit)

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
        type=positive_seconds,
        default=2.0,
        help="seconds between refreshes with --watch (default %(default)s)",
    )
    status.set_defaults(func=cmd_status)

    top = sub.add_parser(
        "top",
        help="the service graph: calls per caller and service, rate, errors, latency",
        description=(
            "Per caller (a process on a node: its service identity, else the name it gave "
            "itself, else its client id) and service it called: calls a second, the share "
            "that failed, p50/p99 latency (ms) over the last minute as the callers' agents "
            "reported them, the node's breaker of the service and its early warning. Only "
            "calls a backend answered are counted."
        ),
    )
    top.add_argument("--service", help="only calls to this service")
    top.add_argument("--caller", help="only calls from this caller")
    top.add_argument("-o", "--output", choices=["table", "json"], default="table")
    top.add_argument(
        "-w", "--watch", action="store_true", help="redraw until Ctrl-C (-o json: one per line)"
    )
    top.add_argument(
        "--interval",
        type=positive_seconds,
        default=2.0,
        help="seconds between refreshes with --watch (default %(default)s)",
    )
    top.set_defaults(func=cmd_top)
    certs_cli.add_parser(sub)
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
