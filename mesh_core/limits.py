"""Limits that keep a hostile or broken client from taking a server down: the numbers
(:class:`Limits`, 0 turns a limit off) and the state that enforces them (:class:`RateLimiter`,
a token bucket per caller, and :class:`StreamCounter`, concurrent streams per node id).

A request over a limit raises :class:`~mesh_core.errors.LimitExceeded` (a rate:
:class:`~mesh_core.errors.RateLimited`; streams: :class:`~mesh_core.errors.TooManyStreams`);
:mod:`mesh_core.status` turns it into the call's status and logs it (event ``limit
exceeded``, with the limit's name), leaving every other call alone.

Messages larger than ``max_message_bytes`` are refused by gRPC itself with
RESOURCE_EXHAUSTED before any handler runs, so no log line of ours records them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mesh_core.errors import ConfigError, LimitExceeded

KiB: Final = 1024
MiB: Final = 1024 * KiB
MAX_NODE_ID_LENGTH: Final = 1024
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
                raise ConfigError(f"{item.name} must not be negative")
        if self.admin_writes_per_second and self.admin_write_burst < 1:
            raise ConfigError(
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

    def check_apply(self, services: int) -> None:
        """Raises :class:`LimitExceeded` for an apply of more services than accepted."""
        _raise(
            too_many("services", services, self.max_services_per_apply, "max_services_per_apply")
        )

    def check_name(self, field: str, name: str) -> None:
        """Raises :class:`LimitExceeded` for a name longer than accepted."""
        _raise(too_long(field, name, self.max_name_length, "max_name_length"))

    def check_registrations(self, node_id: str, registrations: int) -> None:
        """Raises :class:`LimitExceeded` for a node id or a set of registrations too large."""
        _raise(
            too_long("node_id", node_id, self.max_node_id_length, "max_node_id_length")
            or too_many(
                "registrations",
                registrations,
                self.max_registrations_per_node,
                "max_registrations_per_node",
            ),
            node=node_id[:_SHOWN],
        )

    def check_client_report(self, node_id: str, clients: int) -> None:
        """Raises :class:`LimitExceeded` for a node id or a client report too large."""
        _raise(
            too_long("node_id", node_id, self.max_node_id_length, "max_node_id_length")
            or too_many("clients", clients, self.max_clients_per_report, "max_clients_per_report"),
            node=node_id[:_SHOWN],
        )

    def describe(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


def _raise(error: LimitExceeded | None, **who: str) -> None:
    if error is not None:
        error.who.update(who)
        raise error


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
