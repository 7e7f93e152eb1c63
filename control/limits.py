"""Limits that keep a hostile or broken client from taking a server down.

:class:`Limits` holds the numbers (0 turns a limit off); :class:`RateLimiter` (a token bucket
per caller) and :class:`StreamCounter` (concurrent streams per node id) hold the state. The
servicers call the helpers below, which end a call with RESOURCE_EXHAUSTED (a rate or a
count of concurrent streams) or INVALID_ARGUMENT (a request larger than accepted), log it
(event ``limit exceeded``, with the limit's name) and leave every other call alone.

Messages larger than ``max_message_bytes`` are refused by gRPC itself with
RESOURCE_EXHAUSTED before any handler runs, so no log line of ours records them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import grpc
import structlog
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import error_details_pb2, status_pb2

from control.registry import MAX_NODE_ID_LENGTH
from mesh_core.errors import MeshError

log = structlog.get_logger(__name__)

KiB: Final = 1024
MiB: Final = 1024 * KiB
RETRY_AFTER_KEY: Final = "retry-after-ms"
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
_SHOWN: Final = 64  # characters of an over-long value quoted back in an error


@dataclass(frozen=True, slots=True)
class Limits:
    """What one server accepts. Every number is a maximum; 0 means no limit."""

    max_message_bytes: int = 4 * MiB  # received, per message (gRPC refuses larger ones)
    max_send_message_bytes: int = 16 * MiB  # sent, per message
    max_names_per_request: int = 10_000  # resource names in one DiscoveryRequest
    max_name_length: int = 1 * KiB  # one resource name or type URL
    max_node_id_length: int = MAX_NODE_ID_LENGTH
    max_streams_per_node: int = 8  # concurrent ADS streams with one node id
    max_services_per_apply: int = 1_000
    admin_writes_per_second: float = 20.0  # per caller; ApplyServices and DeleteService
    admin_write_burst: int = 40
    max_registrations_per_node: int = 1_000
    max_clients_per_report: int = 1_000

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if getattr(self, item.name) < 0:
                raise ValueError(f"{item.name} must not be negative")
        if self.admin_writes_per_second and self.admin_write_burst < 1:
            raise ValueError(
                "admin_write_burst (--admin-write-burst) must be at least 1 while admin "
                "writes are rate limited"
            )

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC server options for the message sizes."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes or -1),
            ("grpc.max_send_message_length", self.max_send_message_bytes or -1),
        ]

    def write_limiter(self, clock: Callable[[], float] = time.monotonic) -> RateLimiter:
        return RateLimiter(self.admin_writes_per_second, self.admin_write_burst, clock=clock)

    def check_apply(self, services: int) -> LimitExceeded | None:
        return too_many("services", services, self.max_services_per_apply, "max_services_per_apply")

    def check_name(self, field: str, name: str) -> LimitExceeded | None:
        return too_long(field, name, self.max_name_length, "max_name_length")

    def check_registrations(self, node_id: str, registrations: int) -> LimitExceeded | None:
        return too_long(
            "node_id", node_id, self.max_node_id_length, "max_node_id_length"
        ) or too_many(
            "registrations",
            registrations,
            self.max_registrations_per_node,
            "max_registrations_per_node",
        )

    def check_client_report(self, node_id: str, clients: int) -> LimitExceeded | None:
        return too_long(
            "node_id", node_id, self.max_node_id_length, "max_node_id_length"
        ) or too_many("clients", clients, self.max_clients_per_report, "max_clients_per_report")

    def describe(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


class LimitExceeded(MeshError):
    """A call broke a limit. ``limit`` names it (a :class:`Limits` field); ``code`` is the
    status the call ends with; ``retry_after`` (seconds) is set for rate limits."""

    def __init__(
        self,
        limit: str,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        retry_after: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.code = code
        self.retry_after = retry_after


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def too_many(what: str, count: int, maximum: int, limit: str) -> LimitExceeded | None:
    if maximum and count > maximum:
        return LimitExceeded(limit, f"{count} {what} in one request; the limit is {maximum}")
    return None


def too_long(field: str, value: str, maximum: int, limit: str) -> LimitExceeded | None:
    if maximum and len(value) > maximum:
        return LimitExceeded(
            limit,
            f"{field} {_shown(value)} is {len(value)} characters long; the limit is {maximum}",
        )
    return None


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, at most ``burst`` held, each key
    starting full. A rate of 0 admits everything. Thread-safe; ``clock`` is monotonic
    seconds. Buckets that have refilled are forgotten once more than ``max_keys`` exist."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if rate < 0 or (rate and burst < 1):
            raise ValueError("rate must not be negative and burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        """Takes a token for ``key``: returns 0.0 when one was there, otherwise (taking
        nothing) the seconds until one will be."""
        if not self.rate:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                if len(self._buckets) > self._max_keys:
                    self._forget_full(now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _tokens(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.burst)
        tokens, at = held
        return min(float(self.burst), tokens + max(0.0, now - at) * self.rate)

    def _forget_full(self, now: float) -> None:
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class StreamCounter:
    """Concurrent streams per key (a node id), at most ``limit`` each (0: no limit).
    Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        """Counts one more stream for ``key``; False (counting nothing) at the limit."""
        with self._lock:
            count = self._counts.get(key, 0)
            if self.limit and count >= self.limit:
                return False
            self._counts[key] = count + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)


class _Session(Protocol):
    @property
    def node_id(self) -> str: ...


_S = TypeVar("_S", bound=_Session)


class AdsStreamGuard:
    """Checks the requests of one ADS stream against the limits (:meth:`requests`) and holds
    the stream's place among its node's streams once the node is known (:meth:`holding`).
    The owner calls :meth:`release` when the stream ends."""

    def __init__(self, limits: Limits, streams: StreamCounter | None = None) -> None:
        self._limits = limits
        self._streams = streams
        self._held: str | None = None
        self.node_id = ""  # as the first request naming a node named it (cut short if long)

    async def requests(
        self, source: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        """``source``, each request checked first; raises :class:`LimitExceeded`."""
        async for request in source:
            self.check(request)
            yield request

    def check(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Raises :class:`LimitExceeded` for a request over a limit."""
        node_id: str = request.node.id if request.HasField("node") else ""
        self.check_parts(node_id, request.type_url, (request.resource_names,))

    def check_parts(
        self, node_id: str, type_url: str, name_lists: Iterable[Collection[str]]
    ) -> None:
        """The checks of :meth:`check` on a request's parts; each list of names (a delta
        request has three) is held to the limits on its own."""
        limits = self._limits
        if node_id and not self.node_id:
            self.node_id = node_id[: limits.max_node_id_length or None]
        errors = [
            too_long("node.id", node_id, limits.max_node_id_length, "max_node_id_length"),
            too_long("type_url", type_url, limits.max_name_length, "max_name_length"),
        ]
        for names in name_lists:
            errors.append(
                too_many(
                    "resource names",
                    len(names),
                    limits.max_names_per_request,
                    "max_names_per_request",
                )
            )
            longest = max(names, key=len, default="")
            errors.append(
                too_long("resource name", longest, limits.max_name_length, "max_name_length")
            )
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error

    def take_place(self, node_id: str) -> None:
        """Counts the stream for ``node_id``; raises :class:`LimitExceeded`
        (RESOURCE_EXHAUSTED) when the node already has its number of streams."""
        if self._streams is None or self._held is not None:
            return
        if not self._streams.acquire(node_id):
            limit = self._streams.limit
            raise LimitExceeded(
                "max_streams_per_node",
                f"node {node_id} already has {limit} streams to this server; "
                f"the limit is {limit} per node id",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        self._held = node_id

    def holding(self, then: Callable[[_S], None]) -> Callable[[_S], None]:
        """An ``on_node`` hook: takes the stream's place for the session's node, then calls
        ``then`` with the session."""

        def on_node(session: _S) -> None:
            self.take_place(session.node_id)
            then(session)

        return on_node

    def release(self) -> None:
        if self._held is not None and self._streams is not None:
            self._streams.release(self._held)
        self._held = None


def peer_host(peer: str) -> str:
    """The host part of ``context.peer()``: ``ipv4:10.0.0.1:5000`` -> ``10.0.0.1``,
    ``ipv6:[::1]:5000`` -> ``::1``; other forms (``unix:...``) whole."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or address
    if kind == "ipv6":
        host = address.rpartition(":")[0] if address.startswith("[") else address
        return host.strip("[]") or address
    return peer


Context = grpc.aio.ServicerContext[Any, Any]


async def refuse(context: Context, error: LimitExceeded, **fields: object) -> None:
    """Logs ``error`` and ends the call with its status (always raises)."""
    log.warning(
        "limit exceeded",
        limit=error.limit,
        code=error.code.name,
        error=str(error),
        peer=context.peer(),
        **fields,
    )
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    if error.retry_after > 0:
        ms = max(1, math.ceil(error.retry_after * 1000))
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(ms)
        status = status_pb2.Status(code=error.code.value[0], message=str(error))
        status.details.add().Pack(retry)
        metadata = ((RETRY_AFTER_KEY, str(ms)), (_STATUS_DETAILS_KEY, status.SerializeToString()))
    await context.abort(error.code, str(error), trailing_metadata=metadata)


async def enforce(context: Context, error: LimitExceeded | None, **fields: object) -> None:
    """Refuses the call (see :func:`refuse`) when ``error`` is set."""
    if error is not None:
        await refuse(context, error, **fields)


async def admit_write(limiter: RateLimiter, context: Context, method: str, caller: str) -> None:
    """Takes one of ``caller``'s admin write tokens, or refuses the call with
    RESOURCE_EXHAUSTED and a retry-after hint (details and ``retry-after-ms`` metadata)."""
    wait = limiter.acquire(caller)
    if wait <= 0:
        return
    ms = max(1, math.ceil(wait * 1000))
    error = LimitExceeded(
        "admin_writes_per_second",
        f"too many admin writes: at most {limiter.rate:g} a second (bursts of "
        f"{limiter.burst}) per caller; retry after {ms} ms",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        retry_after=wait,
    )
    await refuse(context, error, method=method, caller=caller, retry_after_ms=ms)


# -- command line ------------------------------------------------------------------------------

_SUFFIXES: Final = {"kib": KiB, "k": KiB, "mib": MiB, "m": MiB}


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _bytes(text: str) -> int:
    lowered = text.strip().lower()
    for suffix, factor in _SUFFIXES.items():
        if lowered.endswith(suffix) and lowered[: -len(suffix)].strip().isdigit():
            return int(lowered[: -len(suffix)]) * factor
    return _count(text)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--max-*`` and ``--admin-write*`` flags; 0 turns a limit off."""
    default = Limits()
    group = parser.add_argument_group("limits (0 turns a limit off)")
    flags: list[tuple[str, Callable[[str], Any], str, str]] = [
        ("max_message_bytes", _bytes, "BYTES", "largest message received (KiB/MiB suffix ok)"),
        ("max_send_message_bytes", _bytes, "BYTES", "largest message sent"),
        ("max_names_per_request", _count, "N", "resource names in one xDS request"),
        ("max_name_length", _count, "N", "characters in a resource name or type URL"),
        ("max_node_id_length", _count, "N", "characters in a node id"),
        ("max_streams_per_node", _count, "N", "concurrent ADS streams with one node id"),
        ("max_services_per_apply", _count, "N", "services in one ApplyServices request"),
        (
            "admin_writes_per_second",
            _rate,
            "RATE",
            "admin writes (apply, delete) a second per caller",
        ),
        ("admin_write_burst", _count, "N", "admin writes a caller may make at once"),
        ("max_registrations_per_node", _count, "N", "endpoints one node may register"),
        ("max_clients_per_report", _count, "N", "local client statuses in one node report"),
    ]
    for name, kind, metavar, text in flags:
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            metavar=metavar,
            default=getattr(default, name),
            help=f"{text} (default %(default)s)",
        )


def from_args(args: argparse.Namespace) -> Limits:
    """The :class:`Limits` the flags of :func:`add_arguments` give; raises ValueError."""
    return Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
