"""The commands of ``meshctl``: ``apply``, ``get``, ``delete``, ``validate``, ``status``
(``history``, ``diff``, ``rollback`` and ``audit`` are in :mod:`control.meshctl.history`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from control.config import dump_yaml, load_path, service_to_dict
from control.meshctl.connection import call, error_message, fail, metadata, open_channel, stub
from control.meshctl.services import registrations_of, traffic_lines
from control.meshctl.status import status_json, status_lines, table_lines
from mesh.v1 import admin_pb2, admin_pb2_grpc
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_warnings


def _load(path: str) -> list[Any]:
    try:
        return load_path(Path(path))
    except ConfigError as error:
        for problem in error.problems:
            sys.stderr.write(f"{problem}\n")
        fail(f"{len(error.problems)} problem(s) in {path}; nothing applied")
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")


# grpcio measures route timeouts from a start 1-2 s in the past (README, "Known limits").
GRPCIO_TIMEOUT_FLOOR_S = 2.0


def _warn_about(services: Sequence[Any]) -> None:
    for service in services:
        for field, message in validate_warnings(service):
            sys.stderr.write(f"meshctl: warning: service/{service.name}: {field}: {message}\n")
        timeouts = [("policy.timeout", service.policy)]
        timeouts += [
            (f"routes[{i}].policy.timeout", r.policy) for i, r in enumerate(service.routes)
        ]
        for field, policy in timeouts:
            if not policy.HasField("timeout"):
                continue
            seconds = policy.timeout.ToNanoseconds() / 1e9
            if seconds < GRPCIO_TIMEOUT_FLOOR_S:
                sys.stderr.write(
                    f"meshctl: warning: service/{service.name}: {field} {seconds:g}s is "
                    f"under {GRPCIO_TIMEOUT_FLOOR_S:g}s: raw grpcio (1.85) xds:/// channels "
                    "start the route timeout 1-2 s early and would fail every call; "
                    "mesh_channel() is not affected (see README, Policy timeouts)\n"
                )


def cmd_apply(args: argparse.Namespace) -> None:
    services = _load(args.file)
    _warn_about(services)
    response = call(
        args,
        stub(args).ApplyServices,
        admin_pb2.ApplyServicesRequest(
            services=services, if_revision=args.if_revision, message=args.message or ""
        ),
    )
    for applied in response.services:
        state = "configured" if applied.changed else "unchanged"
        print(f"service/{applied.name} {state} (revision {applied.revision})")


def _stored_dict(stored: admin_pb2.StoredService) -> dict[str, Any]:
    return {"revision": stored.revision, "service": service_to_dict(stored.service)}


def cmd_get(args: argparse.Namespace) -> None:
    response = call(
        args, stub(args).GetServices, admin_pb2.GetServicesRequest(name=args.name or "")
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
    if args.name and response.services:
        _traffic(args, response.services[0].service)


def _traffic(args: argparse.Namespace, service: Any) -> None:
    """The service's subsets and routes, after its row. The subsets count the endpoints nodes
    registered too, which ``GetStatus`` lists; when it fails, a warning says they are not."""
    registered: list[Any] = []
    if service.subsets:
        try:
            status = stub(args).GetStatus(
                admin_pb2.GetStatusRequest(), timeout=args.timeout, metadata=metadata(args)
            )
            registered = registrations_of(status.nodes, service.name)
        except grpc.RpcError as error:
            sys.stderr.write(
                "meshctl: warning: endpoints registered by nodes are not counted in the "
                f"subsets: {error_message(args, error)}\n"
            )
    lines = traffic_lines(service, registered)
    if lines:
        print("\n".join(lines))


def cmd_delete(args: argparse.Namespace) -> None:
    request = admin_pb2.DeleteServiceRequest(
        name=args.name, if_revision=args.if_revision, message=args.message or ""
    )
    response = call(args, stub(args).DeleteService, request)
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
        fail("validation failed")


def cmd_status(args: argparse.Namespace) -> None:
    if args.watch:
        _watch_status(args)
        return
    response = call(args, stub(args).GetStatus, admin_pb2.GetStatusRequest())
    if args.output == "json":
        print(status_json(response, indent=2))
        return
    print("\n".join(status_lines(response)))


def _watch_status(args: argparse.Namespace) -> None:
    watch(
        args,
        lambda stub: stub.GetStatus(
            admin_pb2.GetStatusRequest(), timeout=args.timeout, metadata=metadata(args)
        ),
        lambda response: status_json(response, indent=None),
        status_lines,
    )


def watch(
    args: argparse.Namespace,
    fetch: Callable[[admin_pb2_grpc.MeshAdminServiceStub], Any],
    as_json: Callable[[Any], str],
    as_lines: Callable[[Any], list[str]],
) -> None:
    """Redraws what ``fetch`` gets every ``args.interval`` seconds until Ctrl-C. On a
    terminal the screen is cleared first; otherwise each refresh starts with a separator
    line. With ``-o json``, one compact document per line (``as_json``). An unreachable server
    is an error line (on stderr with ``-o json``), and the next refresh tries again."""
    terminal = sys.stdout.isatty()
    channel: grpc.Channel | None = None
    try:
        while True:
            if channel is None:
                channel = open_channel(args)
            stub = admin_pb2_grpc.MeshAdminServiceStub(channel)
            response: Any = None
            message = ""
            try:
                response = fetch(stub)
            except grpc.RpcError as error:
                message = f"meshctl: {error_message(args, error)}"
                channel.close()  # a new channel reconnects at once, without grpc's backoff
                channel = None
            if args.output == "json":
                if response is None:
                    sys.stderr.write(f"{message}\n")
                    sys.stderr.flush()
                else:
                    sys.stdout.write(f"{as_json(response)}\n")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                lines = [f"--- {stamp}, every {args.interval:g}s (Ctrl-C to stop) ---"]
                lines += [message] if response is None else as_lines(response)
                clear = "\x1b[H\x1b[2J" if terminal else ""
                sys.stdout.write(clear + "\n".join(lines) + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if channel is not None:
            channel.close()


def _table(rows: Sequence[Sequence[str]]) -> None:
    print("\n".join(table_lines(rows)))


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
