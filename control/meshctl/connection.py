"""meshctl's link to mesh-control: the channel (mTLS with ``--tls-*`` or ``$MESH_TLS_*``), the
operator token, and one line saying what to change when a call fails."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from mesh.v1 import admin_pb2_grpc
from mesh_core import tls
from mesh_core.errors import TlsError
from mesh_core.identity import TOKEN_KEY
from mesh_core.status import STORE_ERROR_KEY

DEFAULT_CONTROL = "127.0.0.1:15010"


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"meshctl: {message}\n")
    raise SystemExit(code)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to mesh-control: mTLS with ``--tls-*`` (or ``$MESH_TLS_*``), else plaintext."""
    try:
        files = tls.from_values(args.tls_cert, args.tls_key, args.tls_ca)
    except TlsError as error:
        fail(str(error), 2)
    if files is None:
        return grpc.insecure_channel(args.control)
    return grpc.secure_channel(args.control, tls.channel_credentials(files))


def stub(args: argparse.Namespace) -> admin_pb2_grpc.MeshAdminServiceStub:
    return admin_pb2_grpc.MeshAdminServiceStub(open_channel(args))


def metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The operator token, when ``--token-file`` (or ``$MESH_TOKEN_FILE``) names one."""
    if not args.token_file:
        return ()
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as error:
        fail(f"cannot read --token-file {args.token_file}: {error.strerror}", 2)
    return ((TOKEN_KEY, f"Bearer {token}"),)


def error_message(args: argparse.Namespace, error: Any) -> str:
    """One line saying why a call to mesh-control failed."""
    code = error.code()
    trailing: Any = error.trailing_metadata() or ()
    if any(item[0] == STORE_ERROR_KEY for item in trailing):
        return f"mesh-control at {args.control} cannot reach its store: {error.details()}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = error.details() or code.name
        return f"cannot reach mesh-control at {args.control}: {details}; {hint(args, details)}"
    return f"{code.name.lower().replace('_', ' ')}: {error.details()}"


TLS_FLAGS = "--tls-cert, --tls-key and --tls-ca (or $MESH_TLS_CERT, $MESH_TLS_KEY, $MESH_TLS_CA)"


def hint(args: argparse.Namespace, details: str) -> str:
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


def call(args: argparse.Namespace, method: Callable[..., Any], request: Any) -> Any:
    try:
        return method(request, timeout=args.timeout, metadata=metadata(args))
    except grpc.RpcError as error:
        fail(error_message(args, error))
