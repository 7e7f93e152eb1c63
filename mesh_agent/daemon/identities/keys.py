"""Keys and certificates of service identities on the node: a fresh EC P-256 key and a CSR
naming the identity for each certificate asked for, and what the agent reads back from a
signed chain. The key is made here and never leaves the node."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mesh_core.errors import CertError
from mesh_core.identity import uri_sans


@dataclass(frozen=True)
class KeyAndCsr:
    """A new private key (PEM, PKCS#8) and the CSR (PEM) signed with it."""

    key_pem: bytes
    csr_pem: str


@dataclass(frozen=True)
class Facts:
    """What the agent needs to know of a certificate chain it holds."""

    uris: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime

    def half_life(self) -> datetime.datetime:
        """Half way through the certificate's validity (for one read from disk, whose issue
        time the agent did not see)."""
        return self.not_before + (self.not_after - self.not_before) / 2


def new_key_and_csr(spiffe_id: str) -> KeyAndCsr:
    """A fresh EC P-256 key and a CSR whose only subject alternative name is ``spiffe_id``
    (the subject is left empty: the control server sets its own)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyAndCsr(key_pem, csr.public_bytes(serialization.Encoding.PEM).decode())


def chain_facts(chain_pem: bytes) -> Facts:
    """The first certificate's URI SANs and validity; CertError when it is no PEM."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as error:
        raise CertError(f"not a PEM certificate chain ({error})") from None
    return Facts(tuple(uri_sans(leaf)), leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def key_matches(chain_pem: bytes, key_pem: bytes) -> bool:
    """Whether ``key_pem`` is the private key of the first certificate in ``chain_pem``."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(
        key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)
    )


def chain_problem(chain_pem: bytes, bundle_pem: bytes) -> str | None:
    """Why the chain does not verify against the bundle as an mTLS peer would check it
    (signatures up to a CA of the bundle, validity, CA constraints, usages); None when it
    does. Files that would fail every handshake are better not put in place."""
    try:
        leaf, *intermediates = x509.load_pem_x509_certificates(chain_pem)
        roots = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError as error:
        return f"not PEM certificates ({error})"
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as error:
        return str(error)
    return None


__all__ = ["Facts", "KeyAndCsr", "chain_facts", "chain_problem", "key_matches", "new_key_and_csr"]
