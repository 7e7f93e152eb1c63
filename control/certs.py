"""A small certificate authority for development and tests: ``meshctl certs init|issue|show``.

``init`` writes a self-signed CA (``ca.pem``, ``key.pem``) whose URI SAN ``spiffe://<trust
domain>`` names the trust domain; ``issue`` signs leaf certificates whose identities follow
SPIFFE: ``spiffe://<td>/node/<id>``, ``spiffe://<td>/operator/<name>`` and
``spiffe://<td>/server/<dns name>``. Keys are EC P-256, signatures SHA-256. Private keys are
written atomically and are never readable by anyone but their owner (mode 0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh_core.errors import CertError
from mesh_core.identity import trust_domain_of

DEFAULT_TRUST_DOMAIN = "mesh.local"
CA_DAYS = 3650
LEAF_DAYS = 365
CA_CERT = "ca.pem"
KEY = "key.pem"
CERT = "cert.pem"
BACKDATE = datetime.timedelta(minutes=1)

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

_USAGES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CA:
    """A CA read from a directory written by :func:`init_ca`."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str
    directory: Path


# -- names ---------------------------------------------------------------------------------------


def check_trust_domain(trust_domain: str) -> str:
    """``trust_domain`` if it is a valid SPIFFE trust domain name, else CertError."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise CertError(
            f"invalid trust domain {trust_domain!r}: use 1-255 lowercase letters, digits, "
            "'.', '-' or '_' (e.g. mesh.local)"
        )
    return trust_domain


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid node id or operator name (a SPIFFE path segment)."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise CertError(
            f"invalid {kind} {name!r}: use 1-128 letters, digits, '.', '-' or '_' "
            "(and not '.' or '..')"
        )
    return name


def check_dns_name(name: str) -> str:
    """``name`` if it is a host name per RFC 1123, else CertError."""
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise CertError(
            f"invalid DNS name {name!r}: labels of 1-63 letters, digits or '-' (not at either "
            "end) separated by '.', at most 253 characters, not ending in a numeric label"
        )
    return name


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CertError(f"invalid IP address {text!r}") from None


# -- files ---------------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes ``path`` atomically; the file has ``mode`` from the moment it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise CertError(f"cannot write {path}: {error.strerror or error}") from error


def _mkdir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CertError(f"cannot create directory {directory}: {error.strerror or error}") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise CertError(f"cannot read {what} {path}: {error.strerror or error}") from None


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in the PEM file ``path``."""
    data = _read(Path(path), "certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertError(f"{path}: no PEM certificate in this file") from None
    return certs


# -- the CA --------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_days(days: int) -> int:
    if days < 1:
        raise CertError(f"--days must be at least 1, got {days}")
    return days


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def init_ca(
    out: Path | str,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    days: int = CA_DAYS,
    *,
    force: bool = False,
) -> x509.Certificate:
    """Creates a CA in ``out`` (``ca.pem``, and ``key.pem`` with mode 0600) and returns its
    certificate. An existing CA there is kept (CertError) unless ``force``."""
    directory = Path(out)
    check_trust_domain(trust_domain)
    _check_days(days)
    existing = [name for name in (CA_CERT, KEY) if (directory / name).exists()]
    if existing and not force:
        raise CertError(
            f"{directory} already holds a CA ({', '.join(existing)}); refusing to overwrite it "
            "(use --force to replace it, which invalidates every certificate it issued)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mesh CA {trust_domain}"[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _mkdir(directory)
    _write(directory / KEY, _key_pem(key), 0o600)
    _write(directory / CA_CERT, _cert_pem(cert), 0o644)
    return cert


def load_ca(ca_dir: Path | str) -> CA:
    """The CA in ``ca_dir``, checked: a CA certificate, its key, and a trust domain."""
    directory = Path(ca_dir)
    if not (directory / CA_CERT).exists():
        raise CertError(
            f"no CA in {directory}: {directory / CA_CERT} does not exist "
            f"(create one with: meshctl certs init --out {directory})"
        )
    cert = load_certificates(directory / CA_CERT)[0]
    try:
        key = serialization.load_pem_private_key(_read(directory / KEY, "CA key"), password=None)
    except (ValueError, TypeError) as error:
        raise CertError(
            f"{directory / KEY}: not an unencrypted PEM private key ({error})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / KEY}: expected an EC private key")
    if key.public_key() != cert.public_key():
        raise CertError(f"{directory / KEY} is not the key of {directory / CA_CERT}")
    if not _is_ca(cert):
        raise CertError(f"{directory / CA_CERT} is not a CA certificate")
    trust_domain = trust_domain_of(cert)
    if trust_domain is None:
        raise CertError(
            f"{directory / CA_CERT} carries no spiffe:// URI SAN, so its trust domain is unknown "
            "(was it made by meshctl certs init?)"
        )
    return CA(cert, key, trust_domain, directory)


# -- leaf certificates ---------------------------------------------------------------------------


def sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: Any,
    public: Any,
    kind: str,
    name: str,
    now: datetime.datetime,
    not_after: datetime.datetime,
    usages: list[x509.ObjectIdentifier],
    names: list[x509.GeneralName],
    *,
    key_encipherment: bool = False,
) -> x509.Certificate:
    """A leaf certificate of the mesh for ``public``, signed by ``ca_cert``/``ca_key``: subject
    ``O=mesh, OU=kind, CN=name`` (no CN past 64 characters), valid from ``now`` (backdated a
    little) to ``not_after``, not a CA, with ``usages`` and the SANs ``names``. Shared by
    ``meshctl certs issue`` and the control server's signing of service identities."""
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mesh"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
    ]
    if len(name) <= 64:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def issue(
    ca_dir: Path | str,
    out: Path | str,
    *,
    node: str | None = None,
    operator: str | None = None,
    server: str | None = None,
    ips: Iterable[str] = (),
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """Signs a certificate for exactly one of ``node``, ``operator`` or ``server`` with the CA in
    ``ca_dir``; writes ``cert.pem``, ``key.pem`` (0600) and ``ca.pem`` (the CA certificate) to
    ``out`` and returns the certificate. Its validity ends no later than the CA's."""
    kinds = {"node": node, "operator": operator, "server": server}
    given = [(kind, value) for kind, value in kinds.items() if value is not None]
    if len(given) != 1:
        raise CertError("give exactly one of --node, --operator or --server")
    kind, name = given[0]
    _check_days(days)
    extra_ips = [parse_ip(text) for text in ips]
    names: list[x509.GeneralName] = []
    if kind == "server":
        try:
            address: IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is None:
            check_dns_name(name)
            names.append(x509.DNSName(name))
        elif address.version == 6:
            raise CertError(
                f"--server {name}: an IPv6 address is not a valid SPIFFE path segment; give the "
                f"server a DNS name and add the address with --ip {name}"
            )
        else:
            extra_ips.insert(0, address)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        check_name("node id" if kind == "node" else "operator name", name)
        usages = (
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            if kind == "node"
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
    ca = load_ca(ca_dir)
    directory = Path(out)
    if directory.resolve() == ca.directory.resolve():
        raise CertError(
            f"--out {directory} is the CA's own directory; writing there would replace the CA's "
            "key and certificate"
        )
    names.insert(0, x509.UniformResourceIdentifier(f"spiffe://{ca.trust_domain}/{kind}/{name}"))
    names += [x509.IPAddress(ip) for ip in dict.fromkeys(extra_ips)]

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    cert = sign_leaf(ca.cert, ca.key, key.public_key(), kind, name, now, not_after, usages, names)
    _mkdir(directory)
    _write(directory / KEY, _key_pem(key), 0o600)
    _write(directory / CERT, _cert_pem(cert), 0o644)
    _write(directory / CA_CERT, _cert_pem(ca.cert), 0o644)
    return cert


# -- show ----------------------------------------------------------------------------------------


def san_lines(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    lines = [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    lines += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
    lines += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    return lines


def _usage_names(cert: x509.Certificate) -> list[str]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return [_USAGES.get(oid, oid.dotted_string) for oid in eku]


def describe(cert: x509.Certificate, now: datetime.datetime | None = None) -> list[str]:
    """``meshctl certs show`` lines for one certificate."""
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    state = "not yet valid" if now < start else "EXPIRED" if now > end else "valid"
    key = cert.public_key()
    key_text = (
        f"EC {key.curve.name}"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else type(key).__name__.removeprefix("_")
    )
    return [
        f"subject:   {cert.subject.rfc4514_string() or '-'}",
        f"issuer:    {cert.issuer.rfc4514_string() or '-'}",
        f"serial:    {cert.serial_number:x}",
        f"SANs:      {', '.join(san_lines(cert)) or '-'}",
        f"usage:     {', '.join(_usage_names(cert)) or '-'}",
        f"validity:  {start:%Y-%m-%dT%H:%M:%SZ} to {end:%Y-%m-%dT%H:%M:%SZ} ({state})",
        f"CA:        {'yes' if _is_ca(cert) else 'no'}",
        f"key:       {key_text}",
    ]


# -- command line --------------------------------------------------------------------------------
