"""``etcd://HOST:PORT[,HOST:PORT...][/prefix]`` — services kept in etcd, shared by every control
server pointed at the same cluster (DESIGN.md, decision 6).

Key layout (``prefix`` defaults to ``/mesh``)::

    <prefix>/services/<name>    one mesh.v1.Service, protobuf binary, deterministic serialization
    <prefix>/history/<name>/<seq>   one mesh.v1.HistoryEntry per change of the service (seq:
                                a counter per service, 12 digits); its revision is the key's
                                ``mod_revision``, the revision of the change itself
    <prefix>/audit/<time ns>-<random>   one mesh.v1.AuditEntry per admin write

A history entry is written in the same transaction as the change it records, so writers on
several control servers never lose one: the transaction's compare on the service's key also
guards the counter. Entries pushed out of the store's
:class:`~control.store._history.HistoryLimits` are deleted right after (reads leave them out
meanwhile). History and audit entries are read from etcd when asked for (they
are not kept in memory), so every control server on one etcd shows the same. :class:`EtcdKeys`
gives other parts plain keys beside them (``<prefix>/nodes/``: :mod:`control.shared_nodes`).

Revisions are etcd's own: a service's revision is the ``mod_revision`` of its key, and the
store revision is the etcd revision the store has caught up with (the header revision of the
last read, or the revision of the last change seen). So every control server on one etcd
agrees on revisions, and they never go backwards.

The store keeps a copy of every service in memory (:class:`BaseStore`): it is loaded with one
range read on :meth:`EtcdStore.start`, then kept current by a single etcd watch on
``<prefix>/services/`` from the revision after the last one seen. ``list``, ``get`` and
``watch`` are served from that copy, so they keep working, on the last state read, while etcd
is unreachable; :meth:`EtcdStore.problems` says so meanwhile. When the watch comes back it
resumes from the revision after the last one seen, so no change is missed; if etcd has
compacted that history away, the store reads everything again and turns the difference into
events (a put for each service changed meanwhile, at its ``mod_revision``; a delete at the
revision of the read for each one gone).

Writes go to etcd directly, as transactions that check what they read: ``apply`` reads the
named keys, then writes the changed ones in ONE transaction that compares every named key's
``mod_revision`` with the one read (``create_revision == 0`` for a key that did not exist).
When another writer got in between, the store reads again and retries (up to ``write_retries``
times, with a short jittered backoff; then ConflictError); with
``if_revision`` > 0 the re-read then finds the newer revision and raises ConflictError. A write
returns once the watch has delivered it to the local copy (bounded by the operation timeout), so
a ``get`` after an ``apply`` sees it.

The aetcd client talks to one member; failing over is done here: on a connection error the
store moves to the next listed member (round robin), the watch with backoff
(:class:`mesh_core.backoff.Backoff`), a write once through every member before it raises
StoreUnavailableError.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import aetcd
import grpc
import structlog
from aetcd import rpc
from aetcd.utils import prefix_range_end

from control.store._base import (
    DEFAULT_MAX_LOG,
    AppliedService,
    BaseStore,
    Service,
    StoreEvent,
    StoreProblem,
    _Entry,
    copy_service,
)
from control.store._history import (
    AuditEntry,
    Change,
    HistoryEntry,
    HistoryLimits,
    audit_matches,
    entry,
    keep_mask,
    kept,
)
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.aio import wait_event
from mesh_core.backoff import Backoff
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "/mesh"
DEFAULT_PORT = 2379
SERVICES_DIR = "/services/"
HISTORY_DIR = "/history/"
AUDIT_DIR = "/audit/"
_SEQ_DIGITS = 12
DEFAULT_MAX_TXN_OPS = 128
"""etcd's default ``--max-txn-ops``: compares, and operations, in one transaction."""

_T = TypeVar("_T")

# Keepalive so that a member that vanishes without closing the connection is noticed; etcd
# refuses pings more often than every 5 s (--grpc-keepalive-min-time).
_CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
}
# Between the attempts of a write that lost a race with another writer: jittered, so that
# writers racing for one key do not collide again in step.
_RACE_BACKOFF = Backoff(base=0.005, cap=0.2)
_CONNECTION_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def parse_etcd_url(url: str) -> tuple[builtins.list[str], str]:
    """``etcd://HOST:PORT[,HOST:PORT...][/prefix]`` -> (endpoints ``HOST:PORT``, prefix).

    The port defaults to 2379, the prefix to ``/mesh``; an IPv6 host goes in brackets.
    Raises ConfigError naming the URL."""
    scheme, colon, rest = url.partition(":")
    if scheme.lower() != "etcd" or not colon or not rest.startswith("//"):
        raise ConfigError(f"store URL {url!r}: expected etcd://HOST:PORT[,HOST:PORT...][/prefix]")
    hosts, slash, path = rest[2:].partition("/")
    endpoints: builtins.list[str] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise ConfigError(f"store URL {url!r}: empty etcd endpoint")
        if item.startswith("["):  # [v6]:port
            host, bracket, tail = item.partition("]")
            host += bracket
            if not bracket or (tail and not tail.startswith(":")):
                raise ConfigError(f"store URL {url!r}: bad etcd endpoint {item!r}")
            port_text = tail[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host or host == "[]":
            raise ConfigError(f"store URL {url!r}: missing host in {item!r}")
        port = DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"store URL {url!r}: bad port in {item!r}")
            port = int(port_text)
        endpoints.append(f"{host}:{port}")
    prefix = "/" + unquote(path).strip("/") if slash else ""
    return endpoints, (prefix if prefix not in ("", "/") else DEFAULT_PREFIX)


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"etcd endpoint {endpoint!r}: expected HOST:PORT")
    return host, int(port)


def _rpc_error(exc: BaseException) -> grpc.aio.AioRpcError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return seen
        seen = seen.__cause__
    return None


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the member could not be reached (try another one)."""
    if isinstance(exc, aetcd.ConnectionFailedError | aetcd.ConnectionTimeoutError):
        return True
    if isinstance(exc, grpc.aio.UsageError | ConnectionError):  # channel closed under us
        return True
    error = _rpc_error(exc)
    return error is not None and error.code() in _CONNECTION_CODES


def _being_cancelled() -> bool:
    """Whether the running task is being cancelled (rather than a grpc call of it having been
    cancelled because its channel was closed)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _describe(exc: BaseException) -> str:
    error = _rpc_error(exc)
    if error is not None:
        return f"{error.code().name}: {error.details()}"
    return str(exc) or type(exc).__name__


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


def _kept_key(key: bytes, value: bytes) -> _Kept:
    """A history key's counter and time (0 for a value that does not decode: pruned first)."""
    tail = key.rsplit(b"/", 1)[-1]
    seq = int(tail) if tail.isdigit() else 0
    try:
        time_ns = admin_pb2.HistoryEntry.FromString(value).time.ToNanoseconds()
    except Exception:  # protobuf DecodeError and friends
        time_ns = 0
    return _Kept(key, seq, time_ns)


class _WatchEnded(Exception):
    """The watch stream ended or was canceled by etcd; start it again."""


@dataclass(frozen=True)
class _Current:
    """A key as read from etcd."""

    mod_revision: int
    service: Service | None  # None when the value does not decode


@dataclass(frozen=True)
class _Kept:
    """A history key as read from etcd."""

    key: bytes
    seq: int
    time_ns: int


class EtcdStore(BaseStore):
    """The services under ``prefix`` in the etcd cluster reached through ``endpoints``
    (``HOST:PORT`` each; the first one reachable is used, the next on failure).

    ``start`` gives up after ``start_timeout`` seconds without reaching any member
    (StoreUnavailableError). ``op_timeout`` bounds every etcd call and a write's wait for its
    own change to come back through the watch. ``write_retries`` is how often a write that
    lost a race with another writer is tried again. ``max_txn_ops``: etcd's ``--max-txn-ops``; an
    apply writes two keys per changed service in one transaction (the service and its history
    entry), so at most half as many services change in one apply (ConfigError beyond)."""

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        prefix: str = DEFAULT_PREFIX,
        url: str | None = None,
        start_timeout: float = 10.0,
        op_timeout: float = 5.0,
        write_retries: int = 10,
        backoff: Backoff = Backoff(base=0.1, cap=2.0),  # noqa: B008 (frozen, shared safely)
        max_log: int = DEFAULT_MAX_LOG,
        history: HistoryLimits | None = None,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
    ) -> None:
        super().__init__(max_log=max_log, history=history)
        self._max_txn_ops = max_txn_ops
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint (HOST:PORT)")
        self.endpoints = [e.strip() for e in endpoints]
        self._members = [_split_endpoint(e) for e in self.endpoints]
        clean = "/" + prefix.strip("/")
        self.prefix = clean if clean != "/" else ""
        self.url = url or f"etcd://{','.join(self.endpoints)}{self.prefix or '/'}"
        self._services_key = (self.prefix + SERVICES_DIR).encode("utf-8")
        self._services_end: bytes = prefix_range_end(self._services_key)
        self._history_key = (self.prefix + HISTORY_DIR).encode("utf-8")
        self._audit_key = (self.prefix + AUDIT_DIR).encode("utf-8")
        self._start_timeout = start_timeout
        self._op_timeout = op_timeout
        self._write_retries = max(1, write_retries)
        self._backoff = backoff
        self._member = 0  # index into _members of the one in use
        self._client: Any = None  # aetcd.Client of the member in use
        self._started = False
        self._watcher: asyncio.Task[None] | None = None
        self._watch_call: Any = None  # the watch stream, while one is open
        self._restart_requested = False
        self._unreachable: str | None = None  # why, while the watch cannot reach etcd
        self._bad_keys: dict[str, str] = {}  # key -> why its value is not taken
        self._logger = log.bind(store=self.url)

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r})"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._check_not_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        delays = self._backoff.delays()
        while True:
            try:
                await self._reload()
                break
            except StoreUnavailableError as exc:
                delay = next(delays)
                if loop.time() + delay > deadline:
                    raise StoreUnavailableError(
                        f"cannot reach etcd at {', '.join(self.endpoints)} within "
                        f"{self._start_timeout:g}s: {exc}"
                    ) from exc
                self._logger.info("etcd not reachable yet; retrying", error=str(exc))
                await asyncio.sleep(delay)
        self._started = True
        self._logger.info(
            "store opened",
            revision=self._revision,
            services=len(self._services),
            member=self.endpoints[self._member],
        )
        self._watcher = asyncio.create_task(self._watch_loop(), name=f"{self!r} watch")

    async def close(self) -> None:
        self._close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        client, self._client = self._client, None
        if client is not None:
            await self._close_client(client)

    # -- writes -----------------------------------------------------------------------------

    async def apply(
        self, services: Sequence[Service], *, if_revision: int = 0, change: Change | None = None
    ) -> tuple[int, builtins.list[AppliedService]]:
        self._check_open()
        self._check_batch(services)
        names: builtins.list[str] = [svc.name for svc in services]
        delays = _RACE_BACKOFF.delays()
        for attempt in range(self._write_retries):
            if attempt:
                await asyncio.sleep(next(delays))
            current = await self._read_keys(names)
            self._check_read_conflicts(names, current, if_revision)
            changed = [
                svc
                for svc in services
                if current.get(svc.name) is None or current[svc.name].service != svc
            ]
            if not changed:
                await self._wait_for(max(c.mod_revision for c in current.values()))
                return self._revision, [
                    admin_pb2.AppliedService(
                        name=name, revision=current[name].mod_revision, changed=False
                    )
                    for name in names
                ]
            self._check_txn_size(len(names), len(changed))
            history = await self._read_history([svc.name for svc in changed])
            records = {
                svc.name: self._history_record(
                    svc.name, svc, history[svc.name], change, created=svc.name not in current
                )
                for svc in changed
            }
            txn = rpc.TxnRequest(
                compare=[self._unchanged_since_read(name, current.get(name)) for name in names],
                success=[
                    op
                    for svc in changed
                    for op in (
                        rpc.RequestOp(
                            request_put=rpc.PutRequest(
                                key=self._key(svc.name),
                                value=svc.SerializeToString(deterministic=True),
                            )
                        ),
                        records[svc.name][0],
                    )
                ],
            )
            revision = await self._commit_txn(txn)
            if revision is None:
                self._logger.debug("apply raced another writer; reading again", services=names)
                continue
            await self._prune_history([prune for _, prune in records.values()])
            await self._wait_for(revision)
            written = {svc.name for svc in changed}
            return revision, [
                admin_pb2.AppliedService(
                    name=name,
                    revision=revision if name in written else current[name].mod_revision,
                    changed=name in written,
                )
                for name in names
            ]
        raise ConflictError(
            f"services {', '.join(repr(n) for n in names)} kept changing in etcd while being "
            f"applied ({self._write_retries} attempts); try again"
        )

    async def delete(self, name: str, *, if_revision: int = 0, change: Change | None = None) -> int:
        self._check_open()
        delays = _RACE_BACKOFF.delays()
        for attempt in range(self._write_retries):
            if attempt:
                await asyncio.sleep(next(delays))
            current = (await self._read_keys([name])).get(name)
            if current is None:
                raise NotFoundError(f"service {name!r} not found")
            self._check_read_conflicts([name], {name: current}, if_revision)
            history = await self._read_history([name])
            record, prune = self._history_record(name, None, history[name], change, created=False)
            txn = rpc.TxnRequest(
                compare=[self._unchanged_since_read(name, current)],
                success=[
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key(name))),
                    record,
                ],
            )
            revision = await self._commit_txn(txn)
            if revision is None:
                self._logger.debug("delete raced another writer; reading again", service=name)
                continue
            await self._prune_history([prune])
            await self._wait_for(revision)
            return revision
        raise ConflictError(
            f"service {name!r} kept changing in etcd while being deleted "
            f"({self._write_retries} attempts); try again"
        )

    # -- history and audit ------------------------------------------------------------------

    def _history_prefix(self, name: str) -> bytes:
        return self._history_key + name.encode("utf-8") + b"/"

    def _history_record(
        self,
        name: str,
        service: Service | None,
        existing: Sequence[_Kept],
        change: Change | None,
        *,
        created: bool,
    ) -> tuple[Any, Any | None]:
        """For a write of ``name``: the put of its history entry, for the write's own
        transaction, and the deletion of the entries it pushes out of the limits (None: none),
        for after it.

        ``existing`` must be read after the service's key (whose ``mod_revision`` the
        transaction compares): a writer that got in between changed that key too, so the
        transaction fails and the counter is never taken twice. Pruning after the write is
        safe: what is out of the limits stays out, and the newest entry is never pruned."""
        item = entry(name, 0, change, service, created=created)
        seq = (existing[-1].seq if existing else 0) + 1
        key = self._history_prefix(name) + f"{seq:0{_SEQ_DIGITS}d}".encode()
        put = rpc.RequestOp(
            request_put=rpc.PutRequest(key=key, value=item.SerializeToString(deterministic=True))
        )
        times = [k.time_ns for k in existing] + [item.time.ToNanoseconds()]
        first = keep_mask(times, self.history_limits).index(True)
        if first == 0:
            return put, None
        end = existing[first].key if first < len(existing) else key
        return put, rpc.DeleteRangeRequest(key=self._history_prefix(name), range_end=end)

    async def _prune_history(self, prunes: Sequence[Any | None]) -> None:
        """Deletes history entries out of the limits (best effort: what is left now is left
        out of reads, and pruned by the service's next write)."""
        for request in prunes:
            if request is None:
                continue
            try:
                await self._call(self._delete_call(request))
            except StoreUnavailableError as exc:
                self._logger.warning("cannot prune the history in etcd", error=str(exc))
                return

    def _check_txn_size(self, names: int, changed: int) -> None:
        """A write is one transaction: etcd refuses more than ``--max-txn-ops`` compares or
        operations in one (128 by default)."""
        needed = max(names, 2 * changed)
        if needed > self._max_txn_ops:
            raise ConfigError(
                f"an apply of {names} services ({changed} changed) needs {needed} operations in "
                f"one etcd transaction; this store allows {self._max_txn_ops} (etcd's "
                "--max-txn-ops): apply them in smaller batches"
            )

    async def history(self, name: str) -> builtins.list[HistoryEntry]:
        self._check_open()
        prefix = self._history_prefix(name)
        request = rpc.RangeRequest(key=prefix, range_end=prefix_range_end(prefix))
        response = await self._call(self._range_call(request))
        out = []
        for kv in response.kvs:
            try:
                item = admin_pb2.HistoryEntry.FromString(kv.value)
            except Exception as exc:  # protobuf DecodeError and friends
                self._logger.warning("etcd history key ignored", key=kv.key, error=str(exc))
                continue
            item.revision = int(kv.mod_revision)
            out.append(item)
        return kept(out, self.history_limits)

    async def record_audit(self, item: AuditEntry) -> None:
        self._check_open()
        stamp = item.time.ToNanoseconds()
        key = self._audit_key + f"{stamp:019d}-{uuid.uuid4().hex[:8]}".encode()
        value = item.SerializeToString(deterministic=True)
        await self._call(lambda client: client.put(key, value))
        await self._prune_audit()

    async def _prune_audit(self) -> None:
        """Deletes audit keys older than the age limit, then the oldest beyond the count."""
        start, end = self._audit_key, prefix_range_end(self._audit_key)
        cutoff = start + f"{self.history_limits.cutoff_ns():019d}".encode()
        await self._call(self._delete_call(rpc.DeleteRangeRequest(key=start, range_end=cutoff)))
        counted = await self._call(
            self._range_call(rpc.RangeRequest(key=start, range_end=end, count_only=True))
        )
        excess = int(counted.count) - self.history_limits.audit_count
        if excess <= 0:
            return
        oldest = await self._call(
            self._range_call(
                rpc.RangeRequest(key=start, range_end=end, keys_only=True, limit=excess)
            )
        )
        if oldest.kvs:
            last = oldest.kvs[-1].key + b"\0"
            await self._call(self._delete_call(rpc.DeleteRangeRequest(key=start, range_end=last)))

    async def audit(self, since_ns: int = 0, service: str = "") -> builtins.list[AuditEntry]:
        self._check_open()
        since_ns = max(since_ns, self.history_limits.cutoff_ns())
        start = self._audit_key + f"{since_ns:019d}".encode()
        request = rpc.RangeRequest(key=start, range_end=prefix_range_end(self._audit_key))
        response = await self._call(self._range_call(request))
        out = []
        for kv in response.kvs:
            try:
                item = admin_pb2.AuditEntry.FromString(kv.value)
            except Exception as exc:  # protobuf DecodeError and friends
                self._logger.warning("etcd audit key ignored", key=kv.key, error=str(exc))
                continue
            if audit_matches(item, since_ns, service):
                out.append(item)
        return out

    def _range_call(self, request: Any) -> Callable[[Any], Awaitable[Any]]:
        async def call(client: Any) -> Any:
            return await client.kvstub.Range(
                request, timeout=self._op_timeout, metadata=client.metadata
            )

        return call

    def _delete_call(self, request: Any) -> Callable[[Any], Awaitable[Any]]:
        async def call(client: Any) -> Any:
            return await client.kvstub.DeleteRange(
                request, timeout=self._op_timeout, metadata=client.metadata
            )

        return call

    def problems(self) -> builtins.list[StoreProblem]:
        out: builtins.list[StoreProblem] = []
        if self._unreachable is not None:
            out.append(
                admin_pb2.StoreProblem(
                    source=self.url,
                    message=f"etcd is unreachable ({self._unreachable}); the last state read "
                    f"(revision {self._revision}) stays in force",
                )
            )
        out += [
            admin_pb2.StoreProblem(source=f"{self.url} key {key}", message=message)
            for key, message in sorted(self._bad_keys.items())
        ]
        return out

    # -- etcd calls -------------------------------------------------------------------------

    def _key(self, name: str) -> bytes:
        return self._services_key + name.encode("utf-8")

    def _name(self, key: bytes) -> str:
        return key[len(self._services_key) :].decode("utf-8", errors="replace")

    async def _connected(self) -> Any:
        if self._client is None:
            host, port = self._members[self._member]
            client = aetcd.Client(
                host=host, port=port, timeout=self._op_timeout, options=dict(_CHANNEL_OPTIONS)
            )
            await client.connect()
            self._client = client
        return self._client

    async def _drop(self, client: Any, exc: BaseException) -> None:
        """``client``'s member failed: close it and move on to the next member."""
        if client is None or client is not self._client:
            return  # someone else moved on already
        failed = self.endpoints[self._member]
        self._client = None
        self._member = (self._member + 1) % len(self._members)
        self._logger.info(
            "etcd member unreachable",
            member=failed,
            next=self.endpoints[self._member],
            error=_describe(exc),
        )
        await self._close_client(client)

    async def _close_client(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self._op_timeout):
                await client.close()
        except Exception as exc:  # closing is best effort
            self._logger.debug("closing the etcd client failed", error=_describe(exc))

    async def _call(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """Runs ``call`` with a client, moving through the members on connection errors;
        raises StoreUnavailableError once each has failed."""
        errors: builtins.list[str] = []
        for _ in range(len(self._members)):
            endpoint = self.endpoints[self._member]
            client = None
            try:
                client = await self._connected()
                return await call(client)
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise
                # Not us: grpc cancels the calls of a channel that is closed, which happens
                # when the watch moved to another member meanwhile.
                errors.append(f"{endpoint}: call cancelled, the connection was closed")
                await self._drop(client, exc)
            except Exception as exc:
                if _being_cancelled():
                    # grpc may end a call of a task being cancelled with an error of its own
                    # rather than CancelledError: the cancellation must not be lost in it.
                    raise asyncio.CancelledError from exc
                if not _is_connection_error(exc):
                    raise StoreUnavailableError(
                        f"etcd at {endpoint} failed: {_describe(exc)}"
                    ) from exc
                errors.append(f"{endpoint}: {_describe(exc)}")
                await self._drop(client, exc)
        raise StoreUnavailableError(f"etcd is unreachable ({'; '.join(errors)})")

    async def _read_keys(self, names: Sequence[str]) -> dict[str, _Current]:
        """The named services as etcd has them now (absent names left out), in one read."""
        txn = rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=self._key(name))) for name in names
            ]
        )

        async def call(client: Any) -> Any:
            return await client.kvstub.Txn(txn, timeout=self._op_timeout, metadata=client.metadata)

        response = await self._call(call)
        out: dict[str, _Current] = {}
        for name, op in zip(names, response.responses, strict=True):
            for kv in op.response_range.kvs:
                service, _ = self._decode(kv.key, kv.value)
                out[name] = _Current(int(kv.mod_revision), service)
        return out

    async def _read_history(self, names: Sequence[str]) -> dict[str, builtins.list[_Kept]]:
        """The keys of each named service's history, oldest first (in reads of at most
        ``max_txn_ops`` ranges)."""
        out: dict[str, builtins.list[_Kept]] = {}
        step = self._max_txn_ops
        for start in range(0, len(names), step):
            chunk = names[start : start + step]
            txn = rpc.TxnRequest(
                success=[
                    rpc.RequestOp(
                        request_range=rpc.RangeRequest(
                            key=self._history_prefix(name),
                            range_end=prefix_range_end(self._history_prefix(name)),
                        )
                    )
                    for name in chunk
                ]
            )

            async def call(client: Any, txn: Any = txn) -> Any:
                return await client.kvstub.Txn(
                    txn, timeout=self._op_timeout, metadata=client.metadata
                )

            response = await self._call(call)
            for name, op in zip(chunk, response.responses, strict=True):
                out[name] = [_kept_key(kv.key, kv.value) for kv in op.response_range.kvs]
        return out

    async def _commit_txn(self, txn: Any) -> int | None:
        """The revision of a transaction that succeeded, or None when a compare failed."""

        async def call(client: Any) -> Any:
            return await client.kvstub.Txn(txn, timeout=self._op_timeout, metadata=client.metadata)

        response = await self._call(call)
        if not response.succeeded:
            return None
        return int(response.header.revision)

    def _unchanged_since_read(self, name: str, current: _Current | None) -> Any:
        if current is None:
            return rpc.Compare(
                key=self._key(name),
                result=rpc.Compare.EQUAL,
                target=rpc.Compare.CREATE,
                create_revision=0,
            )
        return rpc.Compare(
            key=self._key(name),
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.MOD,
            mod_revision=current.mod_revision,
        )

    def _check_read_conflicts(
        self, names: Sequence[str], current: dict[str, _Current], if_revision: int
    ) -> None:
        if if_revision <= 0:
            return
        for name in names:
            read = current.get(name)
            if read is not None and read.mod_revision > if_revision:
                raise ConflictError(
                    f"service {name!r} changed at revision {read.mod_revision}, "
                    f"after revision {if_revision}"
                )

    def _decode(self, key: bytes, value: bytes) -> tuple[Service | None, str | None]:
        """The service a key holds, or None and why not."""
        name = self._name(key)
        try:
            service = config_pb2.Service.FromString(value)
        except Exception as exc:  # protobuf DecodeError and friends
            return None, f"not a mesh.v1.Service: {exc}"
        if service.name != name:
            return None, f"holds service {service.name!r}, expected {name!r}"
        return service, None

    # -- the local copy ---------------------------------------------------------------------

    async def _wait_for(self, revision: int) -> None:
        """Waits until the local copy has caught up with ``revision`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._op_timeout
        while self._revision < revision and not self._closed:
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._logger.warning(
                    "the etcd watch is late; the local copy lags behind a write; "
                    "starting the watch again",
                    revision=self._revision,
                    written=revision,
                )
                self._restart_watch()
                return
            await wait_event(changed, remaining)

    async def _reload(self) -> None:
        """Reads every service and brings the local copy in line: on start it is the first
        state; later the differences become events."""
        request = rpc.RangeRequest(key=self._services_key, range_end=self._services_end)

        async def call(client: Any) -> Any:
            return await client.kvstub.Range(
                request, timeout=self._op_timeout, metadata=client.metadata
            )

        response = await self._call(call)
        revision = int(response.header.revision)
        found: dict[str, tuple[Service, int]] = {}
        bad: dict[str, str] = {}
        for kv in response.kvs:
            service, problem = self._decode(kv.key, kv.value)
            key = kv.key.decode("utf-8", errors="replace")
            if service is None:
                bad[key] = problem or "invalid"
            else:
                found[service.name] = (service, int(kv.mod_revision))
        for key, problem in bad.items():
            if self._bad_keys.get(key) != problem:
                self._logger.warning("etcd key ignored", key=key, problem=problem)
        # A bad key keeps the service it held in force at its last good version.
        kept = {self._name(k.encode("utf-8")) for k in bad}
        self._bad_keys = bad
        if not self._started:
            self._services = {name: _Entry(service, mod) for name, (service, mod) in found.items()}
            self._revision = max(self._revision, revision)
            self._reset_log()
            return
        batches: dict[int, tuple[builtins.list[Service], builtins.list[str]]] = {}
        for name, (service, mod) in found.items():
            entry = self._services.get(name)
            if entry is None or entry.service != service:
                at = mod if mod > self._revision else revision
                batches.setdefault(at, ([], []))[0].append(service)
        for name in self._services:
            if name not in found and name not in kept:
                batches.setdefault(revision, ([], []))[1].append(name)
        if batches:
            self._logger.info(
                "store caught up with etcd",
                revision=revision,
                updated=sorted(s.name for puts, _ in batches.values() for s in puts),
                deleted=sorted(n for _, deletes in batches.values() for n in deletes),
            )
        for at in sorted(batches):
            puts, deletes = batches[at]
            self._commit_at(at, puts, deletes)
        self._commit_at(revision, [], [])

    def _commit_at(self, revision: int, puts: Sequence[Service], deletes: Sequence[str]) -> None:
        """Like :meth:`BaseStore._commit`, at etcd's ``revision``."""
        if revision <= self._revision:
            return  # already seen
        for svc in sorted(puts, key=lambda s: str(s.name)):
            stored = copy_service(svc)
            name: str = stored.name
            self._services[name] = _Entry(stored, revision)
            self._tombstones.pop(name, None)
            self._log.append(StoreEvent(revision, name, stored))
        for name in sorted(deletes):
            if self._services.pop(name, None) is None:
                continue
            self._tombstones[name] = revision
            self._log.append(StoreEvent(revision, name, None))
        self._revision = revision
        self._trim_log()
        self._notify()

    def _apply_watch_events(self, events: Sequence[Any]) -> None:
        """Takes one watch response's events, a whole etcd revision at a time."""
        batches: dict[int, tuple[builtins.list[Service], builtins.list[str]]] = {}
        for event in events:
            kv = event.kv
            revision = int(kv.mod_revision)
            key = kv.key.decode("utf-8", errors="replace")
            name = self._name(kv.key)
            puts, deletes = batches.setdefault(revision, ([], []))
            if event.type == rpc.Event.DELETE:
                self._bad_keys.pop(key, None)
                deletes.append(name)
                continue
            service, problem = self._decode(kv.key, kv.value)
            if service is None:
                self._bad_keys[key] = problem or "invalid"
                self._logger.warning(
                    "etcd key ignored; the service keeps its last good version",
                    key=key,
                    problem=problem,
                )
                continue
            self._bad_keys.pop(key, None)
            puts.append(service)
        for revision in sorted(batches):
            puts, deletes = batches[revision]
            self._commit_at(revision, puts, deletes)

    # -- the watch --------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        delays = None
        needs_reload = False
        while not self._closed:
            client = None
            try:
                if needs_reload:
                    await self._reload()
                    needs_reload = False
                client = await self._connected()
                needs_reload = await self._follow(client)
                delays = None
                continue
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                if self._restart_requested:  # _restart_watch: a write was not seen in time
                    self._restart_requested = False
                    continue
                # grpc cancelled the call: its channel was closed by a write that moved on
                # to another member. Follow it there.
                if client is not self._client:
                    continue
            except Exception as exc:
                reason = _describe(exc)
                if client is not None and client is not self._client:
                    continue  # a write moved to another member meanwhile: follow it there
                if isinstance(exc, StoreUnavailableError) or _is_connection_error(exc):
                    if self._unreachable is None:
                        self._logger.warning(
                            "etcd unreachable; serving the last state read",
                            revision=self._revision,
                            error=reason,
                        )
                    self._unreachable = reason
                    if client is not None:
                        await self._drop(client, exc)
                else:
                    self._logger.exception("etcd watch failed; starting it again")
            if delays is None:
                delays = self._backoff.delays()
            await asyncio.sleep(next(delays))

    async def _follow(self, client: Any) -> bool:
        """Watches the services from the revision after the last one seen, feeding the local
        copy, until the stream fails (raises) or etcd says that revision is compacted (returns
        True: read everything again)."""
        start = self._revision + 1
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self._services_key, range_end=self._services_end, start_revision=start
            )
        )
        # No request iterator: the stream stays open for writing, and nothing is left for
        # grpc to close when the call ends.
        call = rpc.WatchStub(client.channel).Watch(metadata=client.metadata)
        self._watch_call = call
        try:
            # A watch that etcd does not confirm in time is on a connection that is not
            # working (seen after an etcd restart): start again rather than wait forever.
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose the cancellation
            # of close() (mesh_core.aio), and then this watch would run on.
            responses = call.__aiter__()
            try:
                async with asyncio.timeout(self._op_timeout):
                    await call.write(create)
                    first = await anext(responses)
            except TimeoutError:
                raise StoreUnavailableError(
                    f"etcd did not confirm the watch within {self._op_timeout:g}s"
                ) from None
            async for response in _prepend(first, responses):
                if response.created:
                    self._on_watching(int(response.header.revision))
                if response.compact_revision:
                    self._logger.warning(
                        "etcd compacted the history the store needs; reading everything again",
                        revision=self._revision,
                        compacted=int(response.compact_revision),
                    )
                    return True
                if response.canceled:
                    raise _WatchEnded(f"etcd canceled the watch: {response.cancel_reason}")
                if response.events:
                    self._apply_watch_events(response.events)
            raise _WatchEnded("etcd ended the watch stream")
        finally:
            self._watch_call = None
            call.cancel()

    def _restart_watch(self) -> None:
        """Ends the current watch stream; the watch loop starts it again from the revision
        after the last one seen (the writes seen meanwhile are not lost)."""
        call = self._watch_call
        if call is not None:
            self._restart_requested = True
            call.cancel()

    def _on_watching(self, etcd_revision: int) -> None:
        if self._unreachable is not None:
            self._logger.info(
                "etcd reachable again; catching up",
                member=self.endpoints[self._member],
                revision=self._revision,
            )
            self._unreachable = None
        if etcd_revision < self._revision:
            self._logger.error(
                "etcd's revision is behind the store's: was etcd reset? Changes below the "
                "store's revision are not seen until the control server restarts",
                etcd_revision=etcd_revision,
                revision=self._revision,
            )

    # -- checks -----------------------------------------------------------------------------

    def _check_not_closed(self) -> None:
        super()._check_open()

    def _check_open(self) -> None:
        super()._check_open()
        if not self._started:
            raise StoreUnavailableError(f"{self!r} is not started")


class EtcdKeys:
    """Plain keys next to the services, under the same prefix, through the same members and
    failover: for state the control servers share that is not config (nodes' registrations
    and status). Keys may be attached to leases, which etcd deletes when they are not kept
    alive or are revoked."""

    def __init__(self, store: EtcdStore, section: str) -> None:
        self._store = store
        self._prefix = f"{store.prefix.rstrip('/')}/{section}/".encode()

    def key(self, name: str) -> bytes:
        return self._prefix + name.encode()

    async def put(self, name: str, value: bytes, lease_id: int | None = None) -> None:
        key = self.key(name)
        await self._store._call(lambda client: client.put(key, value, lease=lease_id))

    async def delete(self, name: str) -> None:
        key = self.key(name)
        await self._store._call(lambda client: client.delete(key))

    async def move(self, name: str, value: bytes, from_lease: int, to_lease: int) -> bool:
        """Writes ``value`` under ``to_lease`` if the key is attached to ``from_lease`` now;
        False (nothing written) when it is not, or is gone."""
        key = self.key(name)
        return await self._txn(
            rpc.TxnRequest(
                compare=[self._on_lease(key, from_lease)],
                success=[
                    rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=to_lease))
                ],
            )
        )

    async def delete_if_on(self, name: str, lease_id: int) -> bool:
        """Deletes the key if it is attached to ``lease_id`` now; False when it is not."""
        key = self.key(name)
        return await self._txn(
            rpc.TxnRequest(
                compare=[self._on_lease(key, lease_id)],
                success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
            )
        )

    async def items(self) -> builtins.list[tuple[str, bytes]]:
        prefix = self._prefix

        async def call(client: Any) -> Any:
            return await client.get_prefix(prefix)

        found = await self._store._call(call)
        return [(kv.key[len(prefix) :].decode(), kv.value) for kv in found]

    async def grant(self, ttl: int) -> int:
        lease = await self._store._call(lambda client: client.lease(ttl))
        return int(lease.id)

    async def keep_alive(self, lease_id: int) -> bool:
        """Refreshes a lease; False when etcd no longer knows it (it expired)."""

        async def call(client: Any) -> Any:
            return await client.refresh_lease(lease_id)

        reply = await self._store._call(call)
        return int(getattr(reply, "TTL", 1)) > 0

    async def revoke(self, lease_id: int) -> bool:
        """Revokes a lease, deleting the keys attached to it; False when etcd no longer knows
        it (it expired, or was revoked already)."""

        async def call(client: Any) -> bool:
            try:
                await client.revoke_lease(lease_id)
            except Exception as exc:
                error = _rpc_error(exc)
                if error is not None and error.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return await self._store._call(call)

    @staticmethod
    def _on_lease(key: bytes, lease_id: int) -> Any:
        return rpc.Compare(
            key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.LEASE, lease=lease_id
        )

    async def _txn(self, txn: Any) -> bool:
        store = self._store

        async def call(client: Any) -> Any:
            return await client.kvstub.Txn(txn, timeout=store._op_timeout, metadata=client.metadata)

        response = await store._call(call)
        return bool(response.succeeded)
