"""Where the config cache keeps what it accepted: ``STATE_DIR/config.journal``, an append-only
journal of the accepted changes, compacted now and then.

Why a journal, not a file per resource: an accepted upstream response is one unit (a state of
the world response replaces several resources of a type at once, a delta one updates some and
removes others), and an agent restarted while the control plane is down must serve what it
held after some response, never half of one. One record per accepted response, appended with
one ``write``, is that unit on disk. A file per resource would need a second mechanism to make
a response's several files one change, and thousands of files for thousands of resources.

Format: a sequence of records, each ``b"MJ" kind:u8 length:u32 crc32:u32 payload``
(little-endian; the CRC covers kind, length and payload). The first record is the header
(kind ``H``, JSON ``{"format": 2, "node_id": ...}``); every other one (kind ``C``) is one
change of one type: ``saved_at`` (f64, seconds since the epoch) and a
``DeltaDiscoveryResponse`` whose ``type_url`` is the type, ``system_version_info`` the
version the type has after the change, ``resources`` the resources set (name and ``Any``)
and ``removed_resources`` the names gone. The state is what applying the records in order to
nothing gives.

Crash safety without fsync (a killed process loses nothing the kernel was handed; only a
power cut could, and the push path does not pay an fsync for that): a record is appended with
one ``write``, so after SIGKILL at any moment the file holds every record before the one being
written and possibly part of that one. A truncated last record (or a last one whose checksum
fails: bytes the kernel never got) is a torn tail: it is ignored, logged, and cut off before
the next append, so the state read back is the one after the last whole record, the last
accepted or the one before. A bad record with records after it is damage no kill can cause:
the file is set aside (renamed ``config.journal.rejected-<time>``) and said so, never trusted
in part. Compaction writes the whole state as a new journal to a temporary file and renames it
over the old one: a reader sees the old journal or the new, both of the same state (a
temporary file a kill leaves behind is removed at the next start). The journal is fsynced once
at a clean shutdown.

Compaction runs when the journal has grown past ``COMPACT_RATIO`` times the size of its last
full write (and at least ``COMPACT_MIN`` bytes): each push appends its change, and the cost of
rewriting the whole state is spread over the many pushes before the next compaction.

Migration: the agent's earlier single state file (``config.json``, format 1, rewritten whole
after every change) is read once when there is no journal, written out as the journal, then
removed (:meth:`~mesh_agent.daemon.cache.ConfigCache.load`).
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from mesh_core.errors import ConfigError
from mesh_xds.types import ResourceName, TypeUrl, Version

log = structlog.get_logger(__name__)

JOURNAL_FORMAT = 2
JOURNAL_FILE = "config.journal"
MAGIC = b"MJ"
HEADER = struct.Struct("<2sBII")  # magic, kind, payload length, crc32
SAVED_AT = struct.Struct("<d")
KIND_HEADER = ord("H")
KIND_CHANGE = ord("C")
COMPACT_RATIO = 2.0
COMPACT_MIN = 256 * 1024
MAX_RECORD = 256 * 1024 * 1024  # a length past this is damage, not a record


class JournalError(ConfigError):
    """The journal cannot be trusted: not a journal, of another node, or damaged."""


@dataclass(slots=True)
class TypeState:
    """One type as the journal restores it."""

    version: Version = ""
    resources: dict[ResourceName, any_pb2.Any] = field(default_factory=dict)


@dataclass(slots=True)
class Restored:
    """What :meth:`Journal.read` found: the state, when it was last written, and what of
    the file was not used (a torn tail)."""

    types: dict[TypeUrl, TypeState]
    saved_at: float
    records: int
    torn_bytes: int = 0


def _record(kind: int, payload: bytes) -> bytes:
    head = struct.pack("<BI", kind, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return HEADER.pack(MAGIC, kind, len(payload), crc) + payload


def header_record(node_id: str) -> bytes:
    body = json.dumps({"format": JOURNAL_FORMAT, "node_id": node_id}).encode()
    return _record(KIND_HEADER, body)


def change_record(
    type_url: TypeUrl,
    version: Version,
    updated: Mapping[ResourceName, any_pb2.Any],
    removed: Iterable[ResourceName],
    saved_at: float,
) -> bytes:
    change = discovery_pb2.DeltaDiscoveryResponse(
        type_url=type_url, system_version_info=version, removed_resources=sorted(removed)
    )
    for name, packed in updated.items():
        change.resources.add(name=name).resource.CopyFrom(packed)
    return _record(KIND_CHANGE, SAVED_AT.pack(saved_at) + change.SerializeToString())


def _torn(data: bytes, at: int) -> bool:
    """Whether nothing but a torn write (or zeros a lost write leaves) follows ``at``: the
    record there claims more bytes than the file has, or is the file's last."""
    if len(data) - at < HEADER.size:
        return True
    magic, _kind, length, _crc = HEADER.unpack_from(data, at)
    if magic != MAGIC:
        return not any(data[at:])
    return bool(at + HEADER.size + int(length) >= len(data))


def parse(data: bytes, node_id: str) -> Restored:
    """The state ``data`` (a journal's bytes) holds; raises :class:`JournalError` naming what
    is wrong when it cannot be trusted. A torn tail is left out and counted."""
    restored = Restored(types={}, saved_at=0.0, records=0)
    at = 0
    while at < len(data):
        if len(data) - at < HEADER.size:
            break
        magic, kind, length, crc = HEADER.unpack_from(data, at)
        end = at + HEADER.size + length
        whole = magic == MAGIC and length <= MAX_RECORD and end <= len(data)
        payload = data[at + HEADER.size : end] if whole else b""
        if not whole or zlib.crc32(payload, zlib.crc32(struct.pack("<BI", kind, length))) != crc:
            if at == 0 and not _torn(data, at):
                raise JournalError("no header: not a mesh-agent journal")
            if _torn(data, at):
                break
            raise JournalError(f"damaged record at byte {at} with records after it")
        if restored.records == 0:
            _check_header(kind, payload, node_id)
        elif kind == KIND_CHANGE:
            _apply(restored, payload, at)
        else:
            raise JournalError(f"record of unknown kind {kind} at byte {at}")
        restored.records += 1
        at = end
    if restored.records == 0:
        raise JournalError("no header: not a mesh-agent journal")
    restored.torn_bytes = len(data) - at
    return restored


def _check_header(kind: int, payload: bytes, node_id: str) -> None:
    try:
        header = json.loads(payload) if kind == KIND_HEADER else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise JournalError(f"not a mesh-agent journal of format {JOURNAL_FORMAT}")
    if header.get("node_id") != node_id:
        raise JournalError(f"state of node {header.get('node_id')!r}, not of this node {node_id!r}")


def _apply(restored: Restored, payload: bytes, at: int) -> None:
    if len(payload) < SAVED_AT.size:
        raise JournalError(f"short change record at byte {at}")
    (saved_at,) = SAVED_AT.unpack_from(payload)
    change = discovery_pb2.DeltaDiscoveryResponse()
    try:
        change.ParseFromString(payload[SAVED_AT.size :])
    except DecodeError as error:
        raise JournalError(f"undecodable change record at byte {at}: {error}") from error
    state = restored.types.setdefault(change.type_url, TypeState())
    for name in change.removed_resources:
        state.resources.pop(name, None)
    for resource in change.resources:
        state.resources[resource.name] = resource.resource
    state.version = change.system_version_info
    restored.saved_at = saved_at


class Journal:
    """The journal file of one node's state dir. Owned by the cache (the event loop)."""

    def __init__(self, state_dir: Path, node_id: str) -> None:
        self.path = state_dir / JOURNAL_FILE
        self.node_id = node_id
        self._handle: int | None = None  # an O_APPEND descriptor, opened at the first append
        self._size = 0  # bytes in the file
        self._base = 0  # bytes of the last full write
        self.compactions = 0

    def exists(self) -> bool:
        return self.path.exists()

    def remove_leftovers(self) -> None:
        """Removes the temporary files of compactions a kill cut short (the journal they
        were to replace is whole)."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def read(self) -> Restored:
        """The state in the journal (raises :class:`JournalError`, or OSError); a torn tail is
        cut off the file so that appends follow the last whole record."""
        data = self.path.read_bytes()
        restored = parse(data, self.node_id)
        good = len(data) - restored.torn_bytes
        if restored.torn_bytes:
            log.warning(
                "torn journal tail ignored",
                path=str(self.path),
                bytes=restored.torn_bytes,
                kept_records=restored.records,
            )
            os.truncate(self.path, good)
        self._size = self._base = good
        return restored

    def append(
        self,
        type_url: TypeUrl,
        version: Version,
        updated: Mapping[ResourceName, any_pb2.Any],
        removed: Iterable[ResourceName],
    ) -> None:
        """Appends one change (one write, no fsync). The caller compacts when
        :attr:`due` says so."""
        record = change_record(type_url, version, updated, removed, time.time())
        if self._handle is None:
            if not self.path.exists():
                self._size = self._base = 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if self._size == 0:
                header = header_record(self.node_id)
                os.write(self._handle, header)
                self._size = self._base = len(header)
        os.write(self._handle, record)
        self._size += len(record)

    @property
    def due(self) -> bool:
        """Whether the journal has grown enough to be rewritten whole."""
        return self._size > max(COMPACT_MIN, COMPACT_RATIO * self._base)

    def rewrite(self, types: Mapping[TypeUrl, TypeState], saved_at: float) -> None:
        """Writes the whole state as a new journal, atomically (temporary file, rename)."""
        chunks = [header_record(self.node_id)]
        for type_url in sorted(types):
            state = types[type_url]
            chunks.append(change_record(type_url, state.version, state.resources, (), saved_at))
        data = b"".join(chunks)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self.close()  # the next append opens the new file
        self._size = self._base = len(data)
        self.compactions += 1

    def sync(self) -> None:
        """Flushes the journal to the disk (a clean shutdown's last word)."""
        if self._handle is not None:
            os.fsync(self._handle)

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None


__all__ = [
    "JOURNAL_FILE",
    "JOURNAL_FORMAT",
    "Journal",
    "JournalError",
    "Restored",
    "TypeState",
    "parse",
]
