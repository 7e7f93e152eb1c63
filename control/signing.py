"""The mesh's signing CA: short-lived certificates for service identities
(``spiffe://<trust domain>/service/<name>``), signed for the nodes that may hold them.

What a certificate holds is fixed here, whatever the request asks: the identity as its only
subject alternative name (a URI), client and server auth usages, a lifetime of
``--cert-lifetime`` (24 h by default, rounded up to the second, never past the CA's own
end), a key the node generated (EC P-256 or P-384, or RSA of 2048 bits or more; the CSR's
signature proves the node holds it). Who may hold which identity is the caller's business
(:mod:`control.node_api`); this module reads what a CSR asks for and signs.

The CA comes from files (``mesh-control serve --signing-ca DIR``, the directory ``meshctl
certs init`` writes, or ``--signing-cert``/``--signing-key`` for an operator's CA), with a
trust bundle (``--trust-bundle``, by default the signing certificate file's CAs): every
CA certificate peers should trust, sent with each certificate. All of them are read again
when they change on disk, so a CA rotation needs no restart: give a bundle with the old and
the new CA, let the agents renew (each renewal fetches the bundle), switch the signing CA
to the new one, and once every certificate of the old one has expired, drop it from the
bundle. Files that do not make a usable CA (a key that is not the certificate's, a bundle
that does not hold the signing CA) are refused and the last good ones kept, with an error
in the log.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from control import certs
from mesh_core.errors import CertError, ConfigError, PermissionDeniedError, PreconditionError
from mesh_core.identity import parse_uri, service_of_uri, trust_domain_of
from mesh_core.validation import service_name_problem

log = structlog.get_logger(__name__)

DEFAULT_LIFETIME = datetime.timedelta(hours=24)
MIN_LIFETIME = datetime.timedelta(seconds=1)
BACKDATE = datetime.timedelta(minutes=1)
"""``not_before`` is this far in the past, for clocks a little behind the server's."""
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048

SignerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class SigningFiles:
    """Where the signing CA is: its certificate (then any intermediates up to a root), its
    key, and the trust bundle (None: the CA certificates of the certificate file)."""

    cert: Path
    key: Path
    bundle: Path | None = None

    @classmethod
    def ca_dir(cls, directory: Path, bundle: Path | None = None) -> SigningFiles:
        """The files of a directory written by ``meshctl certs init``."""
        return cls(directory / certs.CA_CERT, directory / certs.KEY, bundle)

    def stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.cert, self.key, self.bundle):
            try:
                stat = path.stat() if path is not None else None
            except OSError:
                stat = None
            stamps.append((stat.st_mtime_ns, stat.st_size) if stat is not None else (-1, -1))
        return tuple(stamps)


@dataclass(frozen=True)
class SigningCA:
    """A loaded, checked signing CA."""

    cert: x509.Certificate
    key: SignerKey
    chain: tuple[x509.Certificate, ...]
    """What goes after a leaf in its chain: the intermediates (the signer when it is one)."""
    bundle: tuple[x509.Certificate, ...]
    trust_domain: str | None
    """The trust domain its ``spiffe://TD`` URI SAN names (``meshctl certs init``), if any."""

    @property
    def bundle_pem(self) -> str:
        return "".join(_pem(c) for c in self.bundle)


@dataclass(frozen=True)
class SignedCertificate:
    spiffe_id: str
    service: str
    certificate: x509.Certificate
    chain_pem: str
    bundle_pem: str


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _read_certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise CertError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except ValueError:
        raise CertError(f"{what} {path}: no PEM certificate in this file") from None


def _read_key(path: Path) -> SignerKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise CertError(f"cannot read signing key {path}: {error.strerror or error}") from None
    except (ValueError, TypeError) as error:
        raise CertError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{path}: the signing key must be an EC or RSA key")
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_signing_ca(files: SigningFiles) -> SigningCA:
    """The CA in ``files``, checked: a CA certificate, its key, a bundle that trusts it."""
    found = _read_certs(files.cert, "signing certificate")
    signer, rest = found[0], found[1:]
    key = _read_key(files.key)
    if key.public_key() != signer.public_key():
        raise CertError(f"{files.key} is not the key of the certificate in {files.cert}")
    if not _is_ca(signer):
        raise CertError(f"{files.cert}: the first certificate is not a CA certificate")
    chain = tuple(c for c in (signer, *rest) if not _self_signed(c))
    if files.bundle is not None:
        bundle = tuple(_read_certs(files.bundle, "trust bundle"))
    else:
        bundle = tuple(c for c in (signer, *rest) if _self_signed(c)) or (signer,)
    top = chain[-1] if chain else signer
    if not any(c == top or _issued_by(top, c) for c in bundle):
        where = files.bundle if files.bundle is not None else files.cert
        raise CertError(
            f"the trust bundle {where} does not hold the signing CA "
            f"({top.subject.rfc4514_string() or 'no subject'}) or its issuer: the certificates "
            "it signs would be trusted by no one"
        )
    return SigningCA(signer, key, chain, bundle, trust_domain_of(signer))


class SigningAuthority:
    """Signs service certificates with the CA in ``files``, read again whenever a file
    changes (a broken change is logged and the last good CA kept). Event-loop owned."""

    def __init__(
        self,
        files: SigningFiles,
        trust_domain: str,
        lifetime: datetime.timedelta = DEFAULT_LIFETIME,
    ) -> None:
        """Loads the CA now (CertError when it is not usable); ``trust_domain`` is the one
        whose identities it signs, which the CA must not contradict."""
        if lifetime < MIN_LIFETIME:
            raise ConfigError(f"--cert-lifetime must be at least 1s, got {lifetime}")
        self.files = files
        self.trust_domain = trust_domain
        self.lifetime = lifetime
        self._stamp = files.stamp()
        self._ca = self._checked(load_signing_ca(files))

    def _checked(self, ca: SigningCA) -> SigningCA:
        if ca.trust_domain is not None and ca.trust_domain != self.trust_domain:
            raise CertError(
                f"{self.files.cert} names trust domain {ca.trust_domain!r}, but the control "
                f"server's is {self.trust_domain!r} (--trust-domain, or its --tls-ca)"
            )
        return ca

    @property
    def ca(self) -> SigningCA:
        """The CA as the files are now (the last good one when they are not usable)."""
        stamp = self.files.stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._ca = self._checked(load_signing_ca(self.files))
            except CertError as error:
                log.error("new signing CA files not usable, keeping the previous", error=str(error))
            else:
                log.info(
                    "signing CA reloaded",
                    cert=str(self.files.cert),
                    bundle=len(self._ca.bundle),
                )
        return self._ca

    def describe(self) -> str:
        ca = self._ca
        return (
            f"{ca.cert.subject.rfc4514_string()}, trust bundle of {len(ca.bundle)}, "
            f"lifetime {self.lifetime}"
        )

    def requested(self, csr_pem: str) -> tuple[x509.CertificateSigningRequest, str]:
        """The CSR and the service whose identity it asks for; ConfigError for a CSR that is
        malformed, PermissionDeniedError for one asking for what is never signed here."""
        csr = parse_csr(csr_pem)
        uri = requested_uri(csr)
        parsed = service_of_uri(uri)
        if parsed is None:
            kind = f"a {p[1]} identity" if (p := parse_uri(uri)) else "no SPIFFE identity"
            raise PermissionDeniedError(
                f"the CSR asks for {uri!r}, {kind}: only service identities "
                f"(spiffe://{self.trust_domain}/service/NAME) are signed"
            )
        trust_domain, service = parsed
        if trust_domain != self.trust_domain:
            raise PermissionDeniedError(
                f"the CSR asks for {uri!r} in trust domain {trust_domain!r}; this mesh's is "
                f"{self.trust_domain!r}"
            )
        problem = service_name_problem(service)
        if problem:
            raise ConfigError(f"csr: {uri!r}: the service name {problem}")
        return csr, service

    def sign(self, csr: x509.CertificateSigningRequest, service: str) -> SignedCertificate:
        """A certificate for ``service``'s identity on the CSR's key (checked by
        :meth:`requested`; whether the caller may hold it is checked before)."""
        ca = self.ca
        now = datetime.datetime.now(datetime.UTC)
        if ca.cert.not_valid_after_utc <= now:
            raise PreconditionError(
                f"the signing CA expired at {ca.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}; "
                "give the control server a valid one (--signing-ca)"
            )
        uri = f"spiffe://{self.trust_domain}/service/{service}"
        cert = _build(ca, csr, uri, service, now, self.lifetime)
        chain = _pem(cert) + "".join(_pem(c) for c in ca.chain)
        return SignedCertificate(uri, service, cert, chain, ca.bundle_pem)


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The CSR, its signature verified and its key one this CA signs for."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise ConfigError("csr: not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise ConfigError("csr: its signature does not verify with its own key")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            raise ConfigError(f"csr: EC key on {key.curve.name}; use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"csr: RSA key of {key.key_size} bits; use {MIN_RSA_BITS} or more")
    else:
        raise ConfigError(f"csr: a {type(key).__name__} key; use EC P-256")
    return csr


def requested_uri(csr: x509.CertificateSigningRequest) -> str:
    """The CSR's one subject alternative name, a URI; ConfigError for anything else."""
    try:
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = []
    except (ValueError, x509.DuplicateExtension) as error:
        raise ConfigError(f"csr: unreadable extensions ({error})") from None
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        got = ", ".join(str(n.value) for n in names) or "none"
        raise ConfigError(
            "csr: needs exactly one subject alternative name, the URI of the identity "
            f"(spiffe://TD/service/NAME); got {got}"
        )
    return str(names[0].value)


def _whole_second_up(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` rounded up to the second: X.509 times have no fraction, and one cut down
    would give a certificate less than the lifetime asked for (with a lifetime of seconds,
    far less: renewing at half of it would then come sooner and sooner)."""
    if not moment.microsecond:
        return moment
    return moment.replace(microsecond=0) + datetime.timedelta(seconds=1)


def _build(
    ca: SigningCA,
    csr: x509.CertificateSigningRequest,
    uri: str,
    service: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
) -> x509.Certificate:
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)  # parse_csr
    return certs.sign_leaf(
        ca.cert,
        ca.key,
        public,
        "service",
        service,
        now,
        min(_whole_second_up(now + lifetime), ca.cert.not_valid_after_utc),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.UniformResourceIdentifier(uri)],
        key_encipherment=isinstance(public, rsa.RSAPublicKey),
    )


__all__ = [
    "DEFAULT_LIFETIME",
    "SignedCertificate",
    "SigningAuthority",
    "SigningCA",
    "SigningFiles",
    "load_signing_ca",
    "parse_csr",
    "requested_uri",
]
