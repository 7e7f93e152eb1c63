"""The files of one service identity on the node, laid out as
:mod:`mesh_core.identity_files` describes: a version directory per certificate, a ``current``
symlink swapped atomically onto the newest, old versions removed a while after they were
replaced.

Every write goes to a hidden temporary directory first (the key created with mode 0600, never
wider), is flushed to disk, renamed to its version name, and only then made current by
renaming a new symlink over ``current``: a reader through ``current`` finds the old complete
version or the new complete version, never a mix, and a crash leaves the old one in force
(and at worst a hidden directory the next write clears away).
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mesh_core.errors import CertError
from mesh_core.identity_files import CA_FILE, CERT_FILE, CURRENT, KEY_FILE, IdentityPaths

VERSION_PREFIX = "v"
TMP_PREFIX = ".tmp-"
DEFAULT_GRACE = 120.0
"""Seconds an old version stays after it was replaced: a reader that resolved ``current``
just before the swap still finds its files."""


@dataclass(frozen=True)
class Material:
    """What a version holds: the certificate chain, its key and the trust bundle (PEM)."""

    chain: bytes
    key: bytes
    bundle: bytes


def _version_name(now: float) -> str:
    """Names sort in the order versions were written (microseconds, then a random tail)."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{VERSION_PREFIX}{stamp}-{secrets.token_hex(3)}"


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mtime_after(paths: IdentityPaths, now: float) -> int:
    """A whole-second modification time for the new version's files, later than the current
    version's: grpcio's file watcher tells a swap in the middle of its read by a change of
    ``time_t`` (seconds), so two versions must never share one."""
    try:
        previous = int(paths.cert.stat().st_mtime)
    except OSError:
        return math.floor(now)
    return max(math.floor(now), previous + 1)


def write_version(paths: IdentityPaths, material: Material, now: float | None = None) -> Path:
    """Writes ``material`` as a new version and makes it current; returns its directory.
    CertError when the disk refuses (nothing changes then)."""
    now = time.time() if now is None else now
    name = _version_name(now)
    tmp = paths.directory / f"{TMP_PREFIX}{name}"
    try:
        paths.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp.mkdir(mode=0o755)
        _write_file(tmp / KEY_FILE, material.key, 0o600)
        _write_file(tmp / CERT_FILE, material.chain, 0o644)
        _write_file(tmp / CA_FILE, material.bundle, 0o644)
        stamp = _mtime_after(paths, now)
        for file in (KEY_FILE, CERT_FILE, CA_FILE):
            os.utime(tmp / file, (stamp, stamp))
        version = paths.directory / name
        tmp.rename(version)
        link = paths.directory / f"{TMP_PREFIX}{CURRENT}-{secrets.token_hex(3)}"
        link.symlink_to(name)
        os.replace(link, paths.current)
        _fsync_dir(paths.directory)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CertError(
            f"cannot write the identity files of {paths.service} in {paths.directory}: "
            f"{error.strerror or error}"
        ) from error
    return version


def current_version(paths: IdentityPaths) -> Path | None:
    """The version directory ``current`` points at, or None."""
    try:
        target = os.readlink(paths.current)
    except OSError:
        return None
    return paths.directory / target


def read_current(paths: IdentityPaths) -> Material | None:
    """The current version's files, read from the one directory ``current`` resolves to now;
    None when there is none (or it cannot be read)."""
    version = current_version(paths)
    if version is None:
        return None
    try:
        return Material(
            (version / CERT_FILE).read_bytes(),
            (version / KEY_FILE).read_bytes(),
            (version / CA_FILE).read_bytes(),
        )
    except OSError:
        return None


def prune(paths: IdentityPaths, grace: float = DEFAULT_GRACE, now: float | None = None) -> int:
    """Removes the versions replaced more than ``grace`` seconds ago (a version is replaced
    when the next one is written) and leftovers of interrupted writes; returns how many."""
    now = time.time() if now is None else now
    try:
        entries = sorted(paths.directory.iterdir())
    except OSError:
        return 0
    current = current_version(paths)
    versions = [e for e in entries if e.name.startswith(VERSION_PREFIX) and e.is_dir()]
    removed = 0
    for older, newer in itertools.pairwise(versions):
        if older == current:
            continue
        with contextlib.suppress(OSError):
            if now - newer.stat().st_mtime >= grace:
                shutil.rmtree(older)
                removed += 1
    for leftover in (e for e in entries if e.name.startswith(TMP_PREFIX)):
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime >= grace:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
                removed += 1
    return removed


__all__ = [
    "DEFAULT_GRACE",
    "Material",
    "current_version",
    "prune",
    "read_current",
    "write_version",
]
