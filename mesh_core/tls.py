"""mTLS material from files: ``--tls-cert``, ``--tls-key``, ``--tls-ca`` on every daemon and
on ``meshctl``, the same three on both ends of a link.

A server reads its files again when they change on disk (a renewed certificate is used for
the next handshake, no restart); a client reads them each time it connects. A half-written or
mismatched pair is refused and the last good one kept, with an error in the log.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import structlog

from mesh_core.errors import TlsError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TlsMaterial:
    cert: bytes
    key: bytes
    ca: bytes


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's certificate, key and trust bundle (the mesh CA) are."""

    cert: Path
    key: Path
    ca: Path

    def stamp(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.cert, self.key, self.ca):
            try:
                stat = path.stat()
            except OSError:
                stamps.append((-1, -1))
            else:
                stamps.append((stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def read(self) -> TlsMaterial:
        """The three files, checked: PEM, a key that matches the certificate."""
        try:
            material = TlsMaterial(
                self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()
            )
        except OSError as error:
            raise TlsError(f"cannot read TLS file {error.filename}: {error.strerror}") from None
        _check(material, self)
        return material


def _check(material: TlsMaterial, files: TlsFiles) -> None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # the client library alone: the PEM form is what can be checked
        _check_pem(material, files)
        return

    try:
        certificate = x509.load_pem_x509_certificate(material.cert)
    except ValueError as error:
        raise TlsError(f"{files.cert}: not a PEM certificate ({error})") from None
    try:
        key = serialization.load_pem_private_key(material.key, password=None)
    except (ValueError, TypeError) as error:
        raise TlsError(f"{files.key}: not an unencrypted PEM private key ({error})") from None
    try:
        x509.load_pem_x509_certificates(material.ca)
    except ValueError as error:
        raise TlsError(f"{files.ca}: not PEM CA certificates ({error})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise TlsError(f"{files.key} is not the key of the certificate in {files.cert}")


def _check_pem(material: TlsMaterial, files: TlsFiles) -> None:
    if b"-----BEGIN CERTIFICATE-----" not in material.cert:
        raise TlsError(f"{files.cert}: not a PEM certificate")
    if b"PRIVATE KEY-----" not in material.key:
        raise TlsError(f"{files.key}: not a PEM private key")
    if b"-----BEGIN CERTIFICATE-----" not in material.ca:
        raise TlsError(f"{files.ca}: not PEM CA certificates")


def flags(directory: Path) -> list[str]:
    """``--tls-cert/--tls-key/--tls-ca`` for the files ``meshctl certs issue`` wrote to
    ``directory`` (``cert.pem``, ``key.pem``, ``ca.pem``)."""
    return [
        "--tls-cert",
        str(directory / "cert.pem"),
        "--tls-key",
        str(directory / "key.pem"),
        "--tls-ca",
        str(directory / "ca.pem"),
    ]


def add_arguments(parser: argparse.ArgumentParser, *, role: str) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca``: all three or none."""
    parser.add_argument("--tls-cert", type=Path, help=f"PEM certificate of this {role}")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of that certificate")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA certificate(s) to trust (mTLS)")


def from_values(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == 3:
        return None
    if missing:
        raise TlsError(
            f"mTLS needs --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}"
        )
    assert cert is not None and key is not None and ca is not None
    files = TlsFiles(Path(cert), Path(key), Path(ca))
    files.read()
    return files


def from_args(args: argparse.Namespace) -> TlsFiles | None:
    return from_values(args.tls_cert, args.tls_key, args.tls_ca)


class _Reloading:
    """The certificate-configuration fetcher grpc calls before each handshake."""

    def __init__(self, files: TlsFiles, material: TlsMaterial) -> None:
        self.files = files
        self._stamp = files.stamp()
        self._lock = threading.Lock()
        self.current = material

    def configuration(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                material = self.files.read()
            except TlsError as error:
                log.error("new TLS files not usable, keeping the previous ones", error=str(error))
                return None
            if material == self.current:
                return None
            self.current = material
            log.info("TLS certificate reloaded", cert=str(self.files.cert))
            return self.configuration(material)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """mTLS server credentials: a client must present a certificate from the CA. The files are
    read again before a handshake whenever they changed on disk."""
    material = files.read()
    fetcher = _Reloading(files, material)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.configuration(material),
        fetcher,  # type: ignore[arg-type]  # grpc takes None as "unchanged"; stubs omit it
        require_client_authentication=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """mTLS client credentials from the files as they are now."""
    material = files.read()
    return grpc.ssl_channel_credentials(material.ca, material.key, material.cert)


def env_files(prefix: str = "MESH_TLS") -> TlsFiles | None:
    """``MESH_TLS_CERT``, ``MESH_TLS_KEY``, ``MESH_TLS_CA`` from the environment."""
    values = [os.environ.get(f"{prefix}_{part}") for part in ("CERT", "KEY", "CA")]
    return from_values(*(Path(v) if v else None for v in values))


def trust_domain(files: TlsFiles) -> str | None:
    """The trust domain the CA certificate names (a ``spiffe://DOMAIN`` URI SAN, as
    ``meshctl certs init`` writes it), or None."""
    from cryptography import x509

    from mesh_core.identity import trust_domain_of

    for certificate in x509.load_pem_x509_certificates(files.read().ca):
        domain = trust_domain_of(certificate)
        if domain:
            return domain
    return None


def aio_channel(
    target: str, files: TlsFiles | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: mTLS with ``files`` (read now), else plaintext."""
    if files is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, channel_credentials(files), options=options)


def certificate_uris(files: TlsFiles) -> list[str]:
    """The URI SANs of the certificate in ``files`` (a node's: ``spiffe://TD/node/ID``)."""
    from cryptography import x509

    from mesh_core.identity import uri_sans

    return uri_sans(x509.load_pem_x509_certificate(files.read().cert))
