"""``meshctl history``, ``diff``, ``rollback`` and ``audit``: a service's kept versions, what
changed between two of them (or between a file and what is live), putting one back, and the
trail of admin writes."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from control.config import load_path, service_to_dict
from control.meshctl.connection import call, error_message, fail, metadata, stub
from control.meshctl.diff import Document, FieldChange, changes, summary
from control.meshctl.status import table_lines
from mesh.v1 import admin_pb2
from mesh_core.durations import parse_period
from mesh_core.errors import ConfigError


def period(text: str) -> float:
    """argparse type of ``--since``: ``1h``, ``30m``, ``2d``..."""
    try:
        return parse_period(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _when(stamp: Any) -> str:
    moment = datetime.datetime.fromtimestamp(stamp.ToNanoseconds() / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _document(entry: admin_pb2.HistoryEntry) -> Document | None:
    return service_to_dict(entry.service) if entry.HasField("service") else None


def _action(entry: admin_pb2.HistoryEntry) -> str:
    return f"rollback to {entry.rollback_of}" if entry.action == "rollback" else entry.action


def _summaries(entries: Sequence[admin_pb2.HistoryEntry]) -> list[str]:
    out = []
    for index, entry in enumerate(entries):
        before = _document(entries[index - 1]) if index else None
        known = index > 0 or entry.created
        out.append(summary(before, _document(entry), known_before=known))
    return out


def _history(args: argparse.Namespace) -> admin_pb2.GetHistoryResponse:
    response: admin_pb2.GetHistoryResponse = call(
        args, stub(args).GetHistory, admin_pb2.GetHistoryRequest(name=args.service)
    )
    return response


def cmd_history(args: argparse.Namespace) -> None:
    entries = list(_history(args).entries)
    changed = _summaries(entries)
    if args.output == "json":
        out = []
        for entry, change in zip(entries, changed, strict=True):
            out.append(
                {
                    "revision": entry.revision,
                    "time": _when(entry.time),
                    "who": entry.who,
                    "action": entry.action,
                    "rollback_of": entry.rollback_of or None,
                    "message": entry.message,
                    "created": entry.created,
                    "change": change,
                    "service": _document(entry),
                }
            )
        print(json.dumps({"service": args.service, "history": out}, indent=2))
        return
    rows = [("REVISION", "TIME", "WHO", "ACTION", "MESSAGE", "CHANGE")]
    for entry, change in zip(entries, changed, strict=True):
        rows.append(
            (
                str(entry.revision),
                _when(entry.time),
                entry.who or "-",
                _action(entry),
                entry.message or "-",
                change,
            )
        )
    print("\n".join(table_lines(rows)))


def _live(args: argparse.Namespace, name: str) -> admin_pb2.StoredService | None:
    """The service as stored now; None when there is none."""
    try:
        response = stub(args).GetServices(
            admin_pb2.GetServicesRequest(name=name), timeout=args.timeout, metadata=metadata(args)
        )
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        fail(error_message(args, error))
    stored: admin_pb2.StoredService = response.services[0]
    return stored


def _entry_at(
    entries: Sequence[admin_pb2.HistoryEntry], revision: int, name: str, flag: str
) -> int:
    for index, entry in enumerate(entries):
        if entry.revision == revision:
            return index
    kept = ", ".join(str(e.revision) for e in entries)
    fail(
        f"{flag} {revision}: service {name!r} has no revision {revision} in its history "
        f"(revisions kept: {kept})"
    )


def _side(label: str, revision: int, document: Document | None) -> dict[str, Any]:
    return {"label": label, "revision": revision, "service": document}


def _print_diff(
    name: str, old: dict[str, Any], new: dict[str, Any], found: list[FieldChange], as_json: bool
) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "service": name,
                    "from": old,
                    "to": new,
                    "changes": [c.as_dict() for c in found],
                },
                indent=2,
            )
        )
        return
    print(f"--- service/{name} {old['label']}")
    print(f"+++ service/{name} {new['label']}")
    if old["service"] is None and new["service"] is None:
        print("(neither version has the service)")
    elif not found:
        print("no differences")
    for change in found:
        print(change.line())


def _label(entry: admin_pb2.HistoryEntry) -> str:
    who = f" by {entry.who}" if entry.who else ""
    state = "deleted" if not entry.HasField("service") else _action(entry)
    return f"revision {entry.revision} ({state}{who}, {_when(entry.time)})"


def cmd_diff(args: argparse.Namespace) -> None:
    if args.file:
        if args.service or args.from_revision or args.to_revision:
            fail("diff -f FILE compares the file with what is live: no SERVICE, --from or --to")
        _diff_file(args)
        return
    if not args.service:
        fail("diff needs a SERVICE (or -f FILE)")
    name = args.service
    entries = list(_history(args).entries)
    if args.to_revision:
        to_index = _entry_at(entries, args.to_revision, name, "--to")
        new = _side(_label(entries[to_index]), args.to_revision, _document(entries[to_index]))
    else:
        live = _live(args, name)
        if live is None:
            to_index = len(entries) - 1
            new = _side("live (deleted)", 0, None)
        else:
            found = [i for i, e in enumerate(entries) if e.revision == live.revision]
            to_index = found[0] if found else len(entries)
            new = _side(
                f"live (revision {live.revision})", live.revision, service_to_dict(live.service)
            )
    if args.from_revision:
        from_index = _entry_at(entries, args.from_revision, name, "--from")
        old = _side(_label(entries[from_index]), args.from_revision, _document(entries[from_index]))
    elif to_index > 0:
        previous = entries[to_index - 1]
        old = _side(_label(previous), previous.revision, _document(previous))
    else:
        old = _side("(nothing before)", 0, None)
    _print_diff(name, old, new, changes(old["service"], new["service"]), args.output == "json")


def _diff_file(args: argparse.Namespace) -> None:
    try:
        services = load_path(Path(args.file))
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(f"{problem}\n")
        fail(f"{len(error.problems)} problem(s) in {args.file}")
    except OSError as error:
        fail(f"cannot read {args.file}: {error.strerror}")
    results = []
    for service in services:
        live = _live(args, service.name)
        old = (
            _side("live (not there)", 0, None)
            if live is None
            else _side(
                f"live (revision {live.revision})", live.revision, service_to_dict(live.service)
            )
        )
        new = _side(args.file, 0, service_to_dict(service))
        results.append((service.name, old, new, changes(old["service"], new["service"])))
    if args.output == "json":
        print(
            json.dumps(
                [
                    {
                        "service": name,
                        "from": old,
                        "to": new,
                        "changes": [c.as_dict() for c in found],
                    }
                    for name, old, new, found in results
                ],
                indent=2,
            )
        )
        return
    for number, (name, old, new, found) in enumerate(results):
        if number:
            print()
        _print_diff(name, old, new, found, False)


def cmd_rollback(args: argparse.Namespace) -> None:
    response = call(
        args,
        stub(args).RollbackService,
        admin_pb2.RollbackServiceRequest(
            name=args.service,
            to_revision=args.to_revision,
            if_revision=args.if_revision,
            message=args.message or "",
        ),
    )
    applied = response.service
    if args.output == "json":
        print(
            json.dumps(
                {
                    "service": applied.name,
                    "to_revision": args.to_revision,
                    "revision": applied.revision,
                    "changed": applied.changed,
                },
                indent=2,
            )
        )
        return
    if applied.changed:
        print(
            f"service/{applied.name} rolled back to revision {args.to_revision} "
            f"(revision {applied.revision})"
        )
    else:
        print(
            f"service/{applied.name} unchanged: revision {args.to_revision}'s version is "
            f"live (revision {applied.revision})"
        )


def cmd_audit(args: argparse.Namespace) -> None:
    request = admin_pb2.GetAuditRequest(service=args.service or "")
    if args.since is not None:
        request.since.FromNanoseconds(time.time_ns() - int(args.since * 1e9))
    response = call(args, stub(args).GetAudit, request)
    if args.output == "json":
        out = [
            {
                "time": _when(e.time),
                "who": e.who,
                "peer": e.peer,
                "action": e.action,
                "services": list(e.services),
                "outcome": e.outcome,
                "reason": e.reason or None,
                "detail": e.detail or None,
                "revision": e.revision or None,
                "message": e.message,
                "server_id": e.server_id,
            }
            for e in response.entries
        ]
        print(json.dumps({"audit": out}, indent=2))
        return
    rows = [("TIME", "WHO", "PEER", "ACTION", "SERVICES", "OUTCOME", "DETAIL")]
    for e in response.entries:
        if e.outcome == "ok":
            detail = f"revision {e.revision}" + (f": {e.message}" if e.message else "")
        else:
            detail = f"{e.reason}: {e.detail}"
        rows.append(
            (
                _when(e.time),
                e.who or "-",
                e.peer or "-",
                e.action,
                ",".join(e.services) or "-",
                e.outcome,
                detail.replace("\n", " "),
            )
        )
    print("\n".join(table_lines(rows)))
