"""``file:DIR`` — the embedded default store: a directory of YAML files.

Layout::

    DIR/orders.yaml          one file per service written through apply (``<name>.yaml``)
    DIR/team.yaml            hand-written files may hold several services (``---``)
    DIR/.mesh-store.json     the index: store revision, per service its revision, a digest of
                             its deterministic serialization, that serialization (the last
                             good version) and the file that holds it, and deletion tombstones
    DIR/.mesh-history/orders.json   the service's history (:mod:`control.store._history`):
                             one entry per change, through the store or by hand (who
                             ``file``), kept across restarts and after a delete
    DIR/.mesh-audit.json     the audit trail of admin writes

Every ``*.yaml``, ``*.yml`` and ``*.json`` file directly in DIR is loaded with
:func:`control.config.load_documents`; hidden files are ignored. The directory is the truth and
the index only remembers revisions: on start, a service whose digest matches the index keeps
its revision, and anything new, changed or gone gets one new revision.

Hand edits are picked up by a poll loop (``stat`` first, then a content digest). A file is read
once it has been quiet for ``settle`` seconds, so a half-written file is not taken for a
change. A file that fails to load is logged and reported by :meth:`FileStore.problems`, and
the services it held stay in force at their last good version (the index keeps it, so this
holds across restarts, also for a file broken while the store was stopped); deleting a file
deletes its services. A service defined in two files
belongs to the file that held it first; the other definition is a problem of the other file.

Writes are atomic (temporary file in DIR, fsync, rename, fsync of DIR). ``apply`` of a service
held by a multi-document file rewrites that file with the document replaced (formatting and
comments of that file are not kept); ``delete`` removes the document, or the file when it held
nothing else. Services in a file that currently has problems cannot be changed through the store
until the file is fixed (ConflictError). A corrupt index is set aside as
``.mesh-store.json.corrupt-<timestamp>`` and rebuilt from the directory. History and audit
files are written atomically after the services' files (a crash between the two loses that
history entry, never a service); a corrupt one is set aside the same way and started afresh.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import datetime
import hashlib
import json
import os
import re
import stat as stat_module
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from control.config import dump_documents, load_documents, service_to_dict
from control.store._base import (
    DEFAULT_MAX_LOG,
    AppliedService,
    BaseStore,
    Service,
    StoreProblem,
    _Entry,
)
from control.store._history import (
    HAND_EDIT,
    AuditEntry,
    Change,
    HistoryEntry,
    HistoryLimits,
    decode,
    encode,
)
from control.store._history import (
    entry as history_entry,
)
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError

log = structlog.get_logger(__name__)

INDEX_NAME = ".mesh-store.json"
HISTORY_DIR = ".mesh-history"
AUDIT_NAME = ".mesh-audit.json"
TEMP_PREFIX = ".mesh-tmp-"
SUFFIXES = (".yaml", ".yml", ".json")
_INDEX_FORMAT = 1
# A file whose stat is unchanged is read again while its timestamps are this recent, since a
# write within the file system's timestamp granularity does not change them.
_RACY_NS = 2_000_000_000
_CLOCK_SKEW_NS = 1_000_000_000
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")

StatKey = tuple[int, int, int, int]
"""mtime_ns, ctime_ns, size, inode."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def service_digest(svc: Service) -> str:
    """Digest of the deterministic serialization of ``svc``."""
    data: bytes = svc.SerializeToString(deterministic=True)
    return _digest(data)


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


@dataclass
class _FileState:
    stat: StatKey
    digest: str
    good: list[Service]  # services of the last content that loaded
    problems: list[str]  # why the current content is rejected; empty when it loaded
    seq: int  # discovery order


@dataclass
class _FileRead:
    stat: StatKey
    digest: str
    services: list[Service] | None  # None when rejected
    problems: list[str]


@dataclass
class _Scan:
    changed: dict[str, _FileRead] = field(default_factory=dict)
    touched: dict[str, StatKey] = field(default_factory=dict)  # new stat, same content
    removed: set[str] = field(default_factory=set)


@dataclass
class _IndexEntry:
    revision: int
    digest: str
    file: str
    service: Service | None  # last good version


@dataclass
class _Index:
    revision: int
    services: dict[str, _IndexEntry]
    tombstones: dict[str, int]


# -- file system work (runs in a worker thread) ----------------------------------------------


def _is_config_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SUFFIXES)


def _parse_file(name: str, data: bytes, key: StatKey, digest: str) -> _FileRead:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"{name}: not UTF-8 text: {exc.reason} at byte {exc.start}"
        return _FileRead(key, digest, None, [problem])
    try:
        services = load_documents(text, name)
    except ConfigError as exc:
        return _FileRead(key, digest, None, exc.problems or [f"{name}: invalid"])
    except Exception as exc:  # a loader bug must not take the store down
        return _FileRead(key, digest, None, [f"{name}: cannot load: {exc!r}"])
    seen: set[str] = set()
    for svc in services:
        if svc.name in seen:
            problem = f"{name}: service {svc.name!r} is defined more than once"
            return _FileRead(key, digest, None, [problem])
        seen.add(svc.name)
    return _FileRead(key, digest, services, [])


def _read_directory(
    directory: Path, known: Mapping[str, tuple[StatKey, str]], settle_ns: int
) -> _Scan:
    """Compares the directory with ``known`` (file -> stat, digest). Files changed less than
    ``settle_ns`` ago are left for a later scan. Raises OSError when DIR cannot be listed."""
    scan = _Scan()
    present: set[str] = set()
    now = time.time_ns()
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not _is_config_file(name):
                continue
            try:
                if not entry.is_file():
                    continue
                key = _stat_key(entry.stat())
            except FileNotFoundError:
                continue
            present.add(name)
            age = now - max(key[0], key[1])
            recent = -_CLOCK_SKEW_NS < age < settle_ns
            prev = known.get(name)
            if prev is not None and prev[0] == key and not -_CLOCK_SKEW_NS < age < _RACY_NS:
                continue
            if recent and (prev is None or prev[0] != key):
                continue  # being written: look again next time
            try:
                data = (directory / name).read_bytes()
            except FileNotFoundError:
                present.discard(name)
                continue
            except OSError as exc:
                problem = f"{name}: cannot read: {exc.strerror or exc}"
                scan.changed[name] = _FileRead(key, "", None, [problem])
                continue
            digest = _digest(data)
            if prev is not None and prev[1] == digest:
                if prev[0] != key:
                    scan.touched[name] = key
                continue
            if recent:
                continue
            scan.changed[name] = _parse_file(name, data, key, digest)
    scan.removed = set(known) - present
    return scan


def _render(file: str, documents: Sequence[Service]) -> str:
    """YAML, or JSON for a ``.json`` file holding one service."""
    if file.lower().endswith(".json") and len(documents) == 1:
        return json.dumps(service_to_dict(documents[0]), indent=2, ensure_ascii=False) + "\n"
    return dump_documents(documents)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # not supported everywhere
            os.fsync(fd)
    finally:
        os.close(fd)


def _stage(directory: Path, name: str, data: bytes) -> str:
    """Writes ``data`` to a fsynced temporary file next to ``name``; returns its path."""
    try:
        mode = stat_module.S_IMODE(os.stat(directory / name).st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_files(
    directory: Path,
    contents: Mapping[str, bytes],
    removals: Sequence[str],
    expected: Mapping[str, StatKey | None],
) -> dict[str, StatKey]:
    """Replaces ``contents`` atomically and removes ``removals``, after checking that each
    file of ``expected`` is still as last seen (None: must not exist). Returns the new stats."""
    for name, key in expected.items():
        try:
            current: StatKey | None = _stat_key(os.stat(directory / name))
        except FileNotFoundError:
            current = None
        if current != key:
            raise ConflictError(f"{directory / name} was changed on disk meanwhile; try again")
    staged: list[tuple[str, str]] = []
    try:
        for name, data in contents.items():
            staged.append((_stage(directory, name, data), name))
        for tmp, name in staged:
            os.replace(tmp, directory / name)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for name in removals:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    _fsync_dir(directory)
    return {name: _stat_key(os.stat(directory / name)) for name in contents}


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def _parse_index(data: Any) -> _Index:
    """Checks the index JSON strictly; raises ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    if data.get("format") != _INDEX_FORMAT:
        raise ValueError(f"unknown format {data.get('format')!r}")
    revision = _count(data.get("revision"), "revision")
    services: dict[str, _IndexEntry] = {}
    raw_services = data.get("services")
    if not isinstance(raw_services, dict):
        raise ValueError("services: expected an object")
    for name, item in raw_services.items():
        if not isinstance(item, dict):
            raise ValueError(f"services.{name}: expected an object")
        digest, file, encoded = item.get("digest"), item.get("file"), item.get("service")
        if not isinstance(digest, str) or not isinstance(file, str):
            raise ValueError(f"services.{name}: digest and file must be strings")
        service = None
        if encoded is not None:
            try:
                service = config_pb2.Service.FromString(base64.b64decode(encoded, validate=True))
            except Exception as exc:  # binascii.Error, protobuf DecodeError, ...
                raise ValueError(f"services.{name}.service: {exc}") from exc
            if service_digest(service) != digest or service.name != name:
                raise ValueError(f"services.{name}.service: does not match its digest")
        entry_revision = _count(item.get("revision"), f"services.{name}.revision")
        services[name] = _IndexEntry(entry_revision, digest, file, service)
        revision = max(revision, entry_revision)
    raw_tombstones = data.get("tombstones", {})
    if not isinstance(raw_tombstones, dict):
        raise ValueError("tombstones: expected an object")
    tombstones = {
        name: _count(value, f"tombstones.{name}") for name, value in raw_tombstones.items()
    }
    revision = max([revision, *tombstones.values()])
    return _Index(revision, services, tombstones)


def _read_index(directory: Path) -> tuple[_Index | None, str]:
    """The index, or None with ``"missing"`` or ``"corrupt"`` (the corrupt file is set aside)."""
    path = directory / INDEX_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    try:
        return _parse_index(json.loads(raw)), "ok"
    except ValueError as exc:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = path.with_name(f"{INDEX_NAME}.corrupt-{stamp}")
        os.replace(path, aside)
        _fsync_dir(directory)
        log.warning(
            "store index is corrupt; set aside and rebuilt from the directory",
            index=str(path),
            set_aside=str(aside),
            error=str(exc),
        )
        return None, "corrupt"


def _open_directory(directory: Path) -> tuple[_Index | None, str, _Scan]:
    directory.mkdir(parents=True, exist_ok=True)
    with os.scandir(directory) as entries:
        stale = [e.name for e in entries if e.name.startswith(TEMP_PREFIX)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
        log.info("removed a temporary file left by an interrupted write", file=name)
    index, status = _read_index(directory)
    return index, status, _read_directory(directory, {}, 0)


def _set_aside(path: Path, error: str, what: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    log.warning(f"{what} is corrupt; set aside", file=str(path), set_aside=str(aside), error=error)


def _read_kept(directory: Path) -> tuple[dict[str, list[HistoryEntry]], list[AuditEntry]]:
    """The history files and the audit file; corrupt ones are set aside (and start empty)."""
    history: dict[str, list[HistoryEntry]] = {}
    folder = directory / HISTORY_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for path in paths:
        try:
            history[path.stem] = decode(path.read_bytes(), admin_pb2.HistoryEntry)
        except ValueError as exc:
            _set_aside(path, str(exc), "history file")
    audit: list[AuditEntry] = []
    path = directory / AUDIT_NAME
    try:
        audit = decode(path.read_bytes(), admin_pb2.AuditEntry)
    except FileNotFoundError:
        pass
    except ValueError as exc:
        _set_aside(path, str(exc), "audit file")
    return history, audit


def _write_history(directory: Path, files: Mapping[str, bytes]) -> None:
    folder = directory / HISTORY_DIR
    folder.mkdir(exist_ok=True)
    _write_files(folder, files, [], {})


# -- the store ---------------------------------------------------------------------------------


class FileStore(BaseStore):
    """A directory of YAML files (see the module docstring). ``poll_interval`` is how often
    hand edits are looked for (0 disables the poll loop; :meth:`rescan` still works)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        settle: float = 0.2,
        max_log: int = DEFAULT_MAX_LOG,
        history: HistoryLimits | None = None,
    ) -> None:
        super().__init__(max_log=max_log, history=history)
        self.directory = Path(directory)
        self._poll_interval = poll_interval
        self._settle_ns = int(settle * 1e9)
        self._files: dict[str, _FileState] = {}
        self._owner: dict[str, str] = {}  # service -> file it is taken from
        self._duplicates: dict[str, builtins.list[str]] = {}  # file -> problems
        self._dir_problem: str | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._written_index: dict[str, Any] | None = None
        # service -> (revision, digest, base64 serialization), computed once per revision
        self._encoded: dict[str, tuple[int, str, str]] = {}
        self._logger = log.bind(store=str(self.directory))

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        async with self._lock:
            try:
                index, status, scan = await asyncio.to_thread(_open_directory, self.directory)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot open store directory {self.directory}: {exc.strerror or exc}"
                ) from exc
            if status == "missing" and scan.changed:
                self._logger.warning(
                    "store index is missing; rebuilt from the directory",
                    index=str(self.directory / INDEX_NAME),
                )
            try:
                self._history, self._audit = await asyncio.to_thread(_read_kept, self.directory)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"cannot read the history in {self.directory}: {exc.strerror or exc}"
                ) from exc
            self._load(index, scan)
            await self._save_index()
            await self._save_history()
            self._started = True
        self._logger.info("store opened", revision=self._revision, services=len(self._services))
        if self._poll_interval > 0:
            self._poller = asyncio.create_task(self._poll_loop(), name=f"{self!r} poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        async with self._lock:  # let a write in progress finish
            self._close()

    async def rescan(self) -> int:
        """Looks for hand edits now; returns the store revision."""
        self._check_open()
        async with self._lock:
            return await self._rescan_locked()

    # -- writes ---------------------------------------------------------------------------------

    async def apply(
        self, services: Sequence[Service], *, if_revision: int = 0, change: Change | None = None
    ) -> tuple[int, builtins.list[AppliedService]]:
        self._check_open()
        self._check_batch(services)
        bad = [
            f"service {n} ({svc.name}): name: cannot be used as a file name"
            for n, svc in enumerate(services, start=1)
            if not _SAFE_NAME.match(svc.name)
        ]
        if bad:
            raise ConfigError(bad)
        async with self._lock:
            await self._rescan_locked()
            self._check_conflicts((svc.name for svc in services), if_revision)
            candidates = self._changed_services(services)
            if not candidates:
                return self._revision, self._applied(services, set())
            plan: dict[str, builtins.list[Service]] = {}
            new_owner: dict[str, str] = {}
            for svc in candidates:
                name: str = svc.name
                owner = self._owner.get(name)
                if owner is None:
                    owner = self._new_file_name(name, plan)
                    plan[owner] = [svc]
                    new_owner[name] = owner
                    continue
                self._check_writable(owner, name)
                documents = plan.get(owner, self._files[owner].good)
                plan[owner] = [svc if doc.name == name else doc for doc in documents]
            await self._write(plan, [])
            self._owner.update(new_owner)
            before = self._revision
            revision = await self._reconcile(change or Change())
            changed = {
                svc.name
                for svc in services
                if revision > before and self._services[svc.name].revision == revision
            }
            return revision, self._applied(services, changed)

    async def delete(self, name: str, *, if_revision: int = 0, change: Change | None = None) -> int:
        self._check_open()
        async with self._lock:
            await self._rescan_locked()
            if name not in self._services:
                raise NotFoundError(f"service {name!r} not found")
            self._check_conflicts([name], if_revision)
            holders = [
                f for f in sorted(self._files) if any(s.name == name for s in self._files[f].good)
            ]
            for holder in holders:
                self._check_writable(holder, name)
            plan: dict[str, builtins.list[Service]] = {}
            removals: builtins.list[str] = []
            for holder in holders:
                rest = [s for s in self._files[holder].good if s.name != name]
                if rest:
                    plan[holder] = rest
                else:
                    removals.append(holder)
            await self._write(plan, removals)
            return await self._reconcile(change or Change())

    def problems(self) -> builtins.list[StoreProblem]:
        out = []
        if self._dir_problem is not None:
            out.append(
                admin_pb2.StoreProblem(source=str(self.directory), message=self._dir_problem)
            )
        for name in sorted(set(self._files) | set(self._duplicates)):
            state = self._files.get(name)
            lines = [*(state.problems if state else []), *self._duplicates.get(name, [])]
            prefix = f"{name}: "
            out += [
                admin_pb2.StoreProblem(
                    source=str(self.directory / name),
                    message=line.removeprefix(prefix),
                )
                for line in lines
            ]
        return out

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        super()._check_open()
        if not self._started:
            raise StoreUnavailableError(f"{self!r} is not started")

    def _check_writable(self, file: str, name: str) -> None:
        problems = self._files[file].problems
        if problems:
            raise ConflictError(
                f"service {name!r} is defined in {self.directory / file}, which is rejected "
                f"({'; '.join(problems)}); fix or remove that file first"
            )

    def _new_file_name(self, name: str, taken: Mapping[str, object]) -> str:
        candidate, number = f"{name}.yaml", 2
        while (
            candidate in self._files or candidate in taken or (self.directory / candidate).exists()
        ):
            candidate, number = f"{name}.{number}.yaml", number + 1
        return candidate

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _write(self, plan: Mapping[str, Sequence[Service]], removals: Sequence[str]) -> None:
        """Writes the files of ``plan`` (file -> its documents) and removes ``removals``,
        then records them as loaded. Every file is read back before anything is written, so
        the store never writes a file it would reject."""
        contents: dict[str, bytes] = {}
        loaded: dict[str, builtins.list[Service]] = {}
        for file, documents in plan.items():
            text = _render(file, documents)
            loaded[file] = load_documents(text, file)
            contents[file] = text.encode("utf-8")
        expected = {
            file: (self._files[file].stat if file in self._files else None)
            for file in [*plan, *removals]
        }
        try:
            stats = await asyncio.to_thread(
                _write_files, self.directory, contents, removals, expected
            )
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot write to store directory {self.directory}: {exc.strerror or exc}"
            ) from exc
        for file, key in stats.items():
            old = self._files.get(file)
            seq = old.seq if old is not None else self._next_seq()
            self._files[file] = _FileState(key, _digest(contents[file]), loaded[file], [], seq)
        for file in removals:
            self._files.pop(file, None)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                async with self._lock:
                    await self._rescan_locked()
            except StoreUnavailableError:
                pass  # logged once and shown in problems()
            except Exception:
                self._logger.exception("store poll failed")

    async def _rescan_locked(self) -> int:
        known = {name: (state.stat, state.digest) for name, state in self._files.items()}
        try:
            scan = await asyncio.to_thread(_read_directory, self.directory, known, self._settle_ns)
        except OSError as exc:
            problem = f"cannot read the store directory: {exc.strerror or exc}"
            if problem != self._dir_problem:
                self._logger.warning(
                    "store directory unreadable; keeping the last state read", error=problem
                )
            self._dir_problem = problem
            raise StoreUnavailableError(f"{self.directory}: {problem}") from exc
        if self._dir_problem is not None:
            self._logger.info("store directory readable again")
            self._dir_problem = None
        for name, key in scan.touched.items():
            self._files[name].stat = key
        if not scan.changed and not scan.removed:
            return self._revision
        self._absorb(scan)
        return await self._reconcile()

    def _absorb(
        self, scan: _Scan, restored: Mapping[str, builtins.list[Service]] | None = None
    ) -> None:
        """Takes a scan into the file states; a rejected file keeps its last good services
        (for a file not seen before: those ``restored`` from the index)."""
        for name in sorted(scan.changed):
            read = scan.changed[name]
            old = self._files.get(name)
            seq = old.seq if old is not None else self._next_seq()
            if read.services is None:
                if old is not None:
                    good = old.good
                else:
                    good = builtins.list((restored or {}).get(name, []))
                if old is None or old.problems != read.problems:
                    self._logger.warning(
                        "store file rejected; its services keep their last good version",
                        file=name,
                        problems=read.problems,
                        kept=[svc.name for svc in good],
                    )
                self._files[name] = _FileState(read.stat, read.digest, good, read.problems, seq)
            else:
                if old is not None and old.problems:
                    self._logger.info("store file fixed", file=name)
                self._files[name] = _FileState(read.stat, read.digest, read.services, [], seq)
        for name in sorted(scan.removed):
            old = self._files.pop(name)
            self._logger.info(
                "store file removed", file=name, services=[svc.name for svc in old.good]
            )

    def _merge(self) -> dict[str, Service]:
        """The services the files define. A service defined by several files is taken from
        the file it was taken from before, else from the earliest discovered file."""
        defined: dict[str, builtins.list[str]] = {}
        documents: dict[tuple[str, str], Service] = {}
        for file in sorted(self._files, key=lambda f: (self._files[f].seq, f)):
            for svc in self._files[file].good:
                defined.setdefault(svc.name, []).append(file)
                documents[(file, svc.name)] = svc
        desired: dict[str, Service] = {}
        owner: dict[str, str] = {}
        duplicates: dict[str, builtins.list[str]] = {}
        for name, files in defined.items():
            incumbent = self._owner.get(name)
            chosen = incumbent if incumbent in files else files[0]
            owner[name] = chosen
            desired[name] = documents[(chosen, name)]
            for other in files:
                if other != chosen:
                    duplicates.setdefault(other, []).append(
                        f"{other}: service {name!r} is already defined in {chosen}; "
                        "this definition is ignored"
                    )
        for file, problems in sorted(duplicates.items()):
            if problems != self._duplicates.get(file):
                self._logger.warning(
                    "store file defines services twice", file=file, problems=problems
                )
        self._owner = owner
        self._duplicates = duplicates
        return desired

    async def _reconcile(self, change: Change = HAND_EDIT) -> int:
        """Brings the services in line with the files under one new revision; ``change``
        says who made it (default: a hand edit)."""
        desired = self._merge()
        puts = [
            desired[name]
            for name in sorted(desired)
            if name not in self._services or self._services[name].service != desired[name]
        ]
        deletes = sorted(set(self._services) - set(desired))
        revision = self._commit(puts, deletes, change)
        if puts or deletes:
            self._logger.info(
                "store changed",
                revision=revision,
                updated=[svc.name for svc in puts],
                deleted=deletes,
            )
        await self._save_index()
        await self._save_history()
        return revision

    async def _save_history(self) -> None:
        dirty, self._history_dirty = self._history_dirty, set()
        files = {f"{name}.json": encode(self._history[name]) for name in sorted(dirty)}
        if not files:
            return
        try:
            await asyncio.to_thread(_write_history, self.directory, files)
        except OSError as exc:
            self._logger.error("cannot write the history", services=sorted(dirty), error=str(exc))

    async def _audit_changed(self) -> None:
        body = encode(self._audit)
        try:
            await asyncio.to_thread(_write_files, self.directory, {AUDIT_NAME: body}, [], {})
        except OSError as exc:
            self._logger.error("cannot write the audit trail", error=str(exc))

    def _load(self, index: _Index | None, scan: _Scan) -> None:
        """First state: the directory, with the revisions the index remembers."""
        restored: dict[str, builtins.list[Service]] = {}
        if index is not None:
            self._revision = index.revision
            self._tombstones = dict(index.tombstones)
            self._owner = {name: entry.file for name, entry in index.services.items()}
            for entry in index.services.values():
                if entry.service is not None:
                    restored.setdefault(entry.file, []).append(entry.service)
        self._absorb(scan, restored)
        desired = self._merge()
        remembered = index.services if index is not None else {}
        revision = self._revision + 1
        changed = False
        for name in sorted(desired):
            svc = desired[name]
            digest = service_digest(svc)
            known = remembered.get(name)
            if known is not None and known.digest == digest:
                self._services[name] = _Entry(svc, known.revision)
            else:
                self._services[name] = _Entry(svc, revision)
                self._tombstones.pop(name, None)
                self._add_history(
                    history_entry(name, revision, HAND_EDIT, svc, created=known is None)
                )
                changed = True
        for name in remembered:
            if name not in desired:
                self._tombstones[name] = revision
                self._add_history(history_entry(name, revision, HAND_EDIT, None, created=False))
                changed = True
        if changed:
            self._revision = revision
        self._reset_log()

    def _encoded_of(self, name: str) -> tuple[str, str]:
        """Digest and base64 deterministic serialization of a stored service."""
        entry = self._services[name]
        cached = self._encoded.get(name)
        if cached is None or cached[0] != entry.revision:
            data: bytes = entry.service.SerializeToString(deterministic=True)
            cached = (entry.revision, _digest(data), base64.b64encode(data).decode("ascii"))
            self._encoded[name] = cached
        return cached[1], cached[2]

    def _index_data(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        for name in sorted(self._services):
            digest, encoded = self._encoded_of(name)
            services[name] = {
                "revision": self._services[name].revision,
                "digest": digest,
                "file": self._owner.get(name, ""),
                "service": encoded,
            }
        for name in set(self._encoded) - set(self._services):
            del self._encoded[name]
        return {
            "format": _INDEX_FORMAT,
            "revision": self._revision,
            "services": services,
            "tombstones": dict(sorted(self._tombstones.items())),
        }

    async def _save_index(self) -> None:
        data = self._index_data()
        if data == self._written_index:
            return
        body = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")
        try:
            await asyncio.to_thread(_write_files, self.directory, {INDEX_NAME: body}, [], {})
        except OSError as exc:
            self._logger.error("cannot write the store index", error=str(exc))
            return
        self._written_index = data
