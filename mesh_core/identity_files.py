"""Where a node's agent keeps the certificates of the service identities it holds, and how a
process on the node finds them: the paths a grpcio ``file_watcher`` certificate provider
(gRFC A29, the xDS bootstrap's ``certificate_providers``) is given.

The layout, under the agent's certs dir (``--certs-dir``, by default ``identities/`` in its
state dir, ``/var/lib/mesh-agent/identities``)::

    <certs dir>/<service>/
        current -> v20250101T120000.250000Z-3f9a1c   a symlink, swapped atomically
        v20250101T120000.250000Z-3f9a1c/
            cert.pem    the certificate (URI SAN spiffe://TD/service/<service>), then any
                        intermediate CA certificates
            key.pem     its EC P-256 private key, mode 0600, generated on the node
            ca.pem      the trust bundle: every CA certificate peers should trust

A version directory is never changed once ``current`` points at it: a renewal writes a new
one and swaps the link, so a reader going through ``current`` sees the old pair or the new
pair. Each version's files carry a modification time whole seconds apart from the previous
version's: grpcio's file watcher compares the two files' ``time_t`` before and after reading
them and reads again when one moved, which is what keeps it from pairing an old key with a
new certificate. Old versions are removed a while after they are replaced.

No cryptography import at module level: the client library imports this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mesh_core.errors import ConfigError
from mesh_core.tls import TlsFiles, TlsMaterial
from mesh_core.validation import service_name_problem

DEFAULT_CERTS_DIR: Final = Path("/var/lib/mesh-agent/identities")
"""Where the agent keeps identities with its default state dir."""
CERTS_DIR_ENV: Final = "MESH_CERTS_DIR"
"""The variable a process reads its agent's certs dir from (when not given one)."""
CERTS_SUBDIR: Final = "identities"
"""The certs dir's name inside the agent's state dir."""
CURRENT: Final = "current"
CERT_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
CA_FILE: Final = "ca.pem"
CERTIFICATE_PROVIDER: Final = "mesh-identity"
"""The certificate-provider instance (gRFC A29) the client library's bootstrap defines on the
process's identity files, and that the TLS contexts the mesh serves name: one instance gives
both the process's certificate and the trust bundle."""
DEFAULT_REFRESH_INTERVAL: Final = 60.0
"""Seconds between a file watcher's reads of the files: well under half the shortest
lifetime the agent is given, so a renewed certificate is in use long before the old one
expires."""


@dataclass(frozen=True)
class IdentityPaths:
    """The files of one service identity on a node; ``cert``, ``key`` and ``ca`` go through
    the ``current`` link."""

    service: str
    directory: Path

    @property
    def current(self) -> Path:
        return self.directory / CURRENT

    @property
    def cert(self) -> Path:
        return self.current / CERT_FILE

    @property
    def key(self) -> Path:
        return self.current / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.current / CA_FILE

    def tls_files(self) -> TlsFiles:
        return TlsFiles(self.cert, self.key, self.ca)

    def file_watcher(self, refresh_interval: float = DEFAULT_REFRESH_INTERVAL) -> dict[str, Any]:
        """The bootstrap's ``certificate_providers`` entry for this identity (gRFC A29): the
        ``file_watcher`` plugin on the three files, read every ``refresh_interval``
        seconds (grpcio's default, 10 minutes, is too slow for short-lived certificates)."""
        if refresh_interval <= 0:
            raise ConfigError(f"refresh_interval must be positive, got {refresh_interval}")
        return {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": str(self.cert),
                "private_key_file": str(self.key),
                "ca_certificate_file": str(self.ca),
                "refresh_interval": f"{refresh_interval:g}s",
            },
        }

    def read(self) -> TlsMaterial:
        """The certificate, key and bundle of one version: ``current`` resolved once, so the
        pair cannot straddle a renewal. Raises TlsError while no certificate is held."""
        version = Path(os.path.realpath(self.current))
        return TlsFiles(version / CERT_FILE, version / KEY_FILE, version / CA_FILE).read()


def certs_dir(given: Path | str | None = None) -> Path:
    """``given``, else ``$MESH_CERTS_DIR``, else :data:`DEFAULT_CERTS_DIR`."""
    if given:
        return Path(given)
    from_env = os.environ.get(CERTS_DIR_ENV)
    return Path(from_env) if from_env else DEFAULT_CERTS_DIR


def identity_paths(service: str, directory: Path | str | None = None) -> IdentityPaths:
    """Where the agent writes the identity of ``service`` (a service name, as in the
    service's config) under the certs dir ``directory`` (see :func:`certs_dir`)."""
    problem = service_name_problem(service)
    if problem:
        raise ConfigError(f"service name: {problem}")
    return IdentityPaths(service, certs_dir(directory) / service)


__all__ = [
    "CA_FILE",
    "CERTIFICATE_PROVIDER",
    "CERTS_DIR_ENV",
    "CERTS_SUBDIR",
    "CERT_FILE",
    "CURRENT",
    "DEFAULT_CERTS_DIR",
    "DEFAULT_REFRESH_INTERVAL",
    "KEY_FILE",
    "IdentityPaths",
    "certs_dir",
    "identity_paths",
]
