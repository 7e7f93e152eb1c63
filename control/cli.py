"""``mesh-control``: the control server's command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import structlog

from control import __version__, limits
from control.registry import DEFAULT_GRACE
from control.security import Access
from control.server import DRAIN_GRACE, ControlServer, tune_collector, write_ready_file
from control.signing import DEFAULT_LIFETIME, SigningAuthority, SigningFiles, load_signing_ca
from control.store import DEFAULT_AUDIT_COUNT, DEFAULT_HISTORY_COUNT, HistoryLimits
from control.web import DEFAULT_HOST
from mesh_core import telemetry, tls
from mesh_core.durations import parse_duration, parse_period
from mesh_core.errors import CertError, ConfigError, MeshError, TlsError
from mesh_core.logs import configure
from mesh_core.preflight import check_environment

log = structlog.get_logger(__name__)
DEFAULT_STORE = "file:mesh-store"


def _seconds(text: str) -> float:
    try:
        return parse_duration(text).ToNanoseconds() / 1e9
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _period(text: str) -> float:
    try:
        return parse_period(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-control", description="The mesh control server: streams config over xDS v3."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control server")
    serve.add_argument(
        "--listen", default="127.0.0.1:15010", help="HOST:PORT to serve on (port 0 picks one)"
    )
    serve.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help="config store URL: file:DIR (default %(default)s), "
        "etcd://HOST:PORT[,HOST:PORT...][/prefix] or memory:",
    )
    serve.add_argument("--ready-file", type=Path, help="write the bound address here once serving")
    serve.add_argument(
        "--debounce", type=_seconds, default=0.1, help="quiet time before a push (default 100ms)"
    )
    serve.add_argument(
        "--max-delay", type=_seconds, default=1.0, help="longest a push waits in a burst (1s)"
    )
    serve.add_argument(
        "--registration-grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        help="how long a node's registered endpoints outlive its last ADS stream (30s)",
    )
    serve.add_argument(
        "--drain-grace",
        type=_seconds,
        default=DRAIN_GRACE,
        help="on SIGTERM, how long open calls and streams may go on before they are "
        f"cancelled ({DRAIN_GRACE:g}s)",
    )
    history = serve.add_argument_group("history and audit (meshctl history, rollback, audit)")
    history.add_argument(
        "--history-count",
        type=_positive,
        default=DEFAULT_HISTORY_COUNT,
        help="versions kept per service (default %(default)s; the newest is always kept)",
    )
    history.add_argument(
        "--history-age",
        type=_period,
        default="30d",
        help="how long versions and audit entries are kept (default %(default)s)",
    )
    history.add_argument(
        "--audit-count",
        type=_positive,
        default=DEFAULT_AUDIT_COUNT,
        help="audit entries kept in all (default %(default)s)",
    )
    page = serve.add_argument_group(
        "web page (read-only; behind the operator token when the server has one)"
    )
    page.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help="serve the mesh's web page on this port (0 picks one; default: no page)",
    )
    page.add_argument(
        "--http-host",
        metavar="HOST",
        help=f"the address the web page binds to (default {DEFAULT_HOST}: this machine only)",
    )
    serve.add_argument("--server-id", help="identity shown to nodes (default host name + random)")
    serve.add_argument("--log-level", default=None, help="debug, info, warning or error")
    limits.add_arguments(serve)
    telemetry.add_arguments(serve)
    tls.add_arguments(serve, role="control server")
    serve.add_argument(
        "--operator-token-file",
        type=Path,
        help="a file holding a bearer token that also makes a caller an operator (local dev)",
    )
    serve.add_argument(
        "--trust-domain",
        help="the SPIFFE trust domain of callers' identities (default: the one the CA names)",
    )
    add_signing_arguments(serve)
    return parser


def _lifetime(text: str) -> datetime.timedelta:
    return datetime.timedelta(seconds=_seconds(text))


def add_signing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "service identities (certificates signed for the nodes a service's security.hosts "
        "name; needs mTLS)"
    )
    group.add_argument(
        "--signing-ca",
        type=Path,
        metavar="DIR",
        help="sign with the CA in DIR (ca.pem and key.pem, as `meshctl certs init` writes)",
    )
    group.add_argument(
        "--signing-cert",
        type=Path,
        metavar="FILE",
        help="or: your own CA certificate (PEM, then any intermediates up to the root)",
    )
    group.add_argument("--signing-key", type=Path, metavar="FILE", help="that CA's private key")
    group.add_argument(
        "--trust-bundle",
        type=Path,
        metavar="FILE",
        help="the CA certificates nodes are told to trust (default: the signing CA's); "
        "during a CA rotation, the old and the new CA",
    )
    group.add_argument(
        "--cert-lifetime",
        type=_lifetime,
        metavar="DURATION",
        help="how long a service certificate is valid (default 24h; agents renew at half)",
    )


def signing_from(
    args: argparse.Namespace, files: tls.TlsFiles | None, access: Access
) -> SigningAuthority | None:
    """The signing CA the flags give (None: no signing); ConfigError or CertError naming the
    flag that is wrong."""
    given = args.signing_ca is not None or args.signing_cert is not None
    if not given and args.signing_key is None:
        extra = [
            f
            for f, v in (
                ("--trust-bundle", args.trust_bundle),
                ("--cert-lifetime", args.cert_lifetime),
            )
            if v is not None
        ]
        if extra:
            raise ConfigError(f"{' and '.join(extra)} need a signing CA (--signing-ca DIR)")
        return None
    if args.signing_ca is not None and (args.signing_cert or args.signing_key):
        raise ConfigError("give --signing-ca DIR or --signing-cert with --signing-key, not both")
    if args.signing_ca is not None:
        signing = SigningFiles.ca_dir(args.signing_ca, args.trust_bundle)
        if not signing.cert.exists():
            raise CertError(
                f"--signing-ca {args.signing_ca}: no CA there, {signing.cert} does not exist "
                f"(create one with: meshctl certs init --out {args.signing_ca})"
            )
    elif args.signing_cert is None or args.signing_key is None:
        raise ConfigError("--signing-cert and --signing-key go together")
    else:
        signing = SigningFiles(args.signing_cert, args.signing_key, args.trust_bundle)
    if files is None:
        raise ConfigError(
            "a signing CA needs mTLS (--tls-cert, --tls-key, --tls-ca): the control server "
            "signs for a node only after its certificate named it"
        )
    domain = access.trust_domain or load_signing_ca(signing).trust_domain
    if domain is None:
        raise CertError(
            "the trust domain of the identities to sign is unknown: the CAs name none "
            "(spiffe://TD URI SAN); give --trust-domain"
        )
    lifetime = DEFAULT_LIFETIME if args.cert_lifetime is None else args.cert_lifetime
    return SigningAuthority(signing, domain, lifetime)


def access_from(args: argparse.Namespace) -> tuple[tls.TlsFiles | None, Access]:
    """The server's TLS files and access policy from its flags."""
    files = tls.from_args(args)
    token = args.operator_token_file
    if token is not None and not token.is_file():
        raise TlsError(f"--operator-token-file {token}: no such file")
    domain = args.trust_domain or (tls.trust_domain(files) if files is not None else None)
    return files, Access(mtls=files is not None, trust_domain=domain, token_file=token)


async def _serve(args: argparse.Namespace) -> None:
    if args.http_host is not None and args.http_port is None:
        raise ConfigError("--http-host needs --http-port: without it there is no web page")
    files, access = access_from(args)
    signing = signing_from(args, files, access)
    server = ControlServer(
        args.store,
        args.listen,
        debounce=args.debounce,
        max_delay=args.max_delay,
        server_id=args.server_id,
        grace=args.drain_grace,
        registration_grace=args.registration_grace,
        tls=files,
        access=access,
        limits=limits.from_args(args),
        signing=signing,
        history=HistoryLimits(args.history_count, args.history_age, args.audit_count),
        http_port=args.http_port,
        http_host=args.http_host or DEFAULT_HOST,
    )
    structlog.contextvars.bind_contextvars(server_id=server.server_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    address = await server.start()
    await server.wait_until_published()
    tune_collector()
    if args.ready_file:
        write_ready_file(args.ready_file, address)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    if server.left_running:
        _exit_now(1)


def _exit_now(code: int) -> NoReturn:
    """Ends the process at once, for a stop that left tasks running (logged by the server):
    asyncio.run would cancel them again and wait for them without a bound, and a control
    server that does not exit on SIGTERM only gets killed later, by a supervisor's timeout."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure(args.log_level)
    check_environment("mesh-control")
    otel = telemetry.start("mesh-control", "mesh-control", args.metrics_port, args.metrics_host)
    try:
        asyncio.run(_serve(args))
    except (OSError, MeshError) as error:
        sys.stderr.write(f"mesh-control: {error}\n")
        raise SystemExit(1) from None
    finally:
        otel.shutdown()


if __name__ == "__main__":
    main()
