"""``meshctl certs init|issue|show``: the command line of the development CA
(:mod:`control.certs`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from control.certs import (
    CA_CERT,
    CA_DAYS,
    CERT,
    DEFAULT_TRUST_DOMAIN,
    KEY,
    LEAF_DAYS,
    describe,
    init_ca,
    issue,
    load_certificates,
    san_lines,
)
from mesh_core.errors import CertError


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"meshctl: {message}\n")
    raise SystemExit(2)


def _reporting(command: Callable[[argparse.Namespace], None]) -> Callable[[Any], None]:
    def run(args: argparse.Namespace) -> None:
        try:
            command(args)
        except CertError as error:
            _fail(str(error))

    return run


def _out(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def cmd_init(args: argparse.Namespace) -> None:
    cert = init_ca(args.out, args.trust_domain, args.days, force=args.force)
    _out(
        [
            f"CA for trust domain {args.trust_domain} written to {Path(args.out) / CA_CERT} "
            f"(key {Path(args.out) / KEY}, mode 0600)",
            f"valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        ]
    )


def cmd_issue(args: argparse.Namespace) -> None:
    cert = issue(
        args.ca,
        args.out,
        node=args.node,
        operator=args.operator,
        server=args.server,
        ips=args.ip or (),
        days=args.days,
    )
    out = Path(args.out)
    _out(
        [
            f"{out / CERT} (key {out / KEY}, mode 0600; CA {out / CA_CERT})",
            f"SANs: {', '.join(san_lines(cert))}",
            f"valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        ]
    )


def cmd_show(args: argparse.Namespace) -> None:
    certs = load_certificates(Path(args.file))
    lines: list[str] = []
    for index, cert in enumerate(certs):
        if len(certs) > 1:
            lines += [""] if index else []
            lines.append(f"certificate {index + 1} of {len(certs)}")
        lines += describe(cert)
    _out(lines)


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 day, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    """Registers ``certs`` and its subcommands ``init``, ``issue`` and ``show``."""
    certs = subparsers.add_parser(
        "certs",
        help="a small CA for development and tests: create it, issue certificates, show one",
        description=(
            "A certificate authority for development and tests. Identities are SPIFFE IDs: "
            "spiffe://TD/node/ID, spiffe://TD/operator/NAME, spiffe://TD/server/DNSNAME. "
            "Keys are EC P-256; private keys are written with mode 0600."
        ),
    )
    sub = certs.add_subparsers(dest="certs_command", required=True)

    init = sub.add_parser("init", help="create a CA: DIR/ca.pem and DIR/key.pem")
    init.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    init.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help="SPIFFE trust domain (default %(default)s)",
    )
    init.add_argument(
        "--days", type=_days, default=CA_DAYS, help="validity in days (default %(default)s)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    init.set_defaults(func=_reporting(cmd_init))

    issue_cmd = sub.add_parser(
        "issue", help="issue a certificate: OUT/cert.pem, OUT/key.pem and OUT/ca.pem"
    )
    issue_cmd.add_argument("--ca", required=True, type=Path, metavar="DIR", help="the CA's DIR")
    kind = issue_cmd.add_mutually_exclusive_group(required=True)
    kind.add_argument("--node", metavar="ID", help="a node agent (client and server)")
    kind.add_argument("--operator", metavar="NAME", help="an operator (client)")
    kind.add_argument("--server", metavar="DNSNAME", help="a server: a DNS name or IPv4 address")
    issue_cmd.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    issue_cmd.add_argument(
        "--ip", action="append", metavar="IP", help="add an IP address SAN (repeatable)"
    )
    issue_cmd.add_argument(
        "--days", type=_days, default=LEAF_DAYS, help="validity in days (default %(default)s)"
    )
    issue_cmd.set_defaults(func=_reporting(cmd_issue))

    show = sub.add_parser("show", help="print a certificate's subject, SANs, issuer and validity")
    show.add_argument("file", metavar="FILE", help="a PEM certificate file")
    show.set_defaults(func=_reporting(cmd_show))
