"""Service configuration: YAML/JSON documents to ``mesh.v1.Service`` protos and back.

Documents are converted by walking the message descriptors (not ``json_format``) so that
durations read naturally (``250ms``, ``1m30s``) and every problem names its field path.
:func:`load_documents` and :func:`load_path` collect every problem of every document and
raise one :class:`~mesh_core.errors.ConfigError` whose lines read like::

    orders.yaml: document 1 (orders): policy.retry.attempts: must be between 1 and 5

:func:`validate_service` holds the semantic rules, shared with the admin API.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError

__all__ = [
    "GRPC_STATUS_NAMES",
    "LB_POLICIES",
    "MAX_DURATION",
    "RETRYABLE_STATUS_NAMES",
    "Dumper",
    "dump_documents",
    "dump_yaml",
    "format_duration",
    "load_documents",
    "load_path",
    "parse_duration",
    "service_to_dict",
    "validate_service",
]

NANOS_PER_SECOND = 1_000_000_000
MAX_DURATION = Duration(seconds=86_400)
"""Longest duration any policy field accepts (one day)."""

# Health-check defaults for fields a policy leaves unset. The control server advertises them
# in Cluster.health_checks and the agent's checker applies them: one definition for both.
HEALTH_CHECK_INTERVAL_S = 5.0
HEALTH_CHECK_TIMEOUT_S = 1.0
HEALTH_CHECK_UNHEALTHY_THRESHOLD = 3
HEALTH_CHECK_HEALTHY_THRESHOLD = 2

GRPC_STATUS_NAMES: tuple[str, ...] = (
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
"""The 16 non-OK gRPC status names."""

RETRYABLE_STATUS_NAMES: tuple[str, ...] = (
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
)
"""Status names a retry policy may list in ``retry_on``."""

LB_POLICIES: tuple[str, ...] = ("", "round_robin", "ring_hash")
"""Load balancing policies every gRPC xDS client implements ("" is round_robin)."""
UNSUPPORTED_LB_POLICIES: dict[str, str] = {
    "least_request": "gRPC's xDS clients implement it only in grpc-java; grpcio and the "
    "other languages reject the whole cluster, and every call to the service fails",
}
"""Policies xDS can express but gRPC clients reject, with the reason."""

MAX_WEIGHT = 1_000_000
MAX_HALF_OPEN_PROBES = 1000
UINT32_MAX = 2**32 - 1
MERGE_KEY = "<<"

# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_UNIT_NANOS: dict[str, int] = {
    "h": 3600 * NANOS_PER_SECOND,
    "m": 60 * NANOS_PER_SECOND,
    "s": NANOS_PER_SECOND,
    "ms": 1_000_000,
    "us": 1_000,
    "µs": 1_000,
    "ns": 1,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_COMPONENT = re.compile(rf"({_NUMBER})(h|ms|m|s|us|µs|ns)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:h|ms|m|s|us|µs|ns))+")
_BARE_NUMBER = re.compile(rf"[+]?{_NUMBER}")
_PROTO_MAX_SECONDS = 315_576_000_000  # google.protobuf.Duration's limit, about 10,000 years


def _nanos_from_decimal(value: Decimal, original: object) -> int:
    nanos = value * NANOS_PER_SECOND
    if nanos != nanos.to_integral_value():
        raise ValueError(f"invalid duration {original!r}: finer than a nanosecond")
    if nanos > _PROTO_MAX_SECONDS * NANOS_PER_SECOND:
        raise ValueError(f"invalid duration {original!r}: too large")
    return int(nanos)


def parse_duration(text: str | int | float) -> Duration:
    """Parses ``"2s"``, ``"250ms"``, ``"1.5s"``, ``"100us"``, ``"1m30s"``, ``"1h"``; a bare
    number (or numeric string) is seconds. Raises ValueError when negative or malformed."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(
            f"invalid duration {text!r}: expected a string like '2s' or '250ms' or a number of "
            "seconds"
        )
    if isinstance(text, int | float):
        try:
            seconds = Decimal(repr(text)) if isinstance(text, float) else Decimal(text)
        except InvalidOperation:
            raise ValueError(f"invalid duration {text!r}") from None
        if not seconds.is_finite():
            raise ValueError(f"invalid duration {text!r}: must be finite")
        if seconds < 0:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return _duration_from_nanos(_nanos_from_decimal(seconds, text))
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative")
    if _BARE_NUMBER.fullmatch(stripped):
        return _duration_from_nanos(_nanos_from_decimal(Decimal(stripped.lstrip("+")), text))
    body = stripped.lstrip("+")
    if not _DURATION.fullmatch(body):
        raise ValueError(
            f"invalid duration {text!r}: expected a number with a unit, like '2s', '250ms', "
            "'1m30s' (units h, m, s, ms, us, ns)"
        )
    total = Decimal(0)
    for number, unit in _COMPONENT.findall(body):
        total += Decimal(number) * _UNIT_NANOS[unit]
    return _duration_from_nanos(_nanos_from_decimal(total / NANOS_PER_SECOND, text))


def _duration_from_nanos(nanos: int) -> Duration:
    seconds, rest = divmod(nanos, NANOS_PER_SECOND)
    return Duration(seconds=seconds, nanos=rest)


def _nanos(d: Duration) -> int:
    return int(d.seconds) * NANOS_PER_SECOND + int(d.nanos)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(d: Duration) -> str:
    """The shortest natural form of ``d``: ``"2s"``, ``"250ms"``, ``"1m30s"``, ``"1.5s"``.
    :func:`parse_duration` reads every result back to the same value."""
    nanos = _nanos(d)
    if nanos == 0:
        return "0s"
    if nanos < 0:
        return "-" + format_duration(_duration_from_nanos(-nanos))
    if nanos < NANOS_PER_SECOND:
        for unit in ("ms", "us"):
            if nanos >= _UNIT_NANOS[unit]:
                return _decimal_text(Decimal(nanos) / _UNIT_NANOS[unit]) + unit
        return f"{nanos}ns"
    hours, rest = divmod(nanos, _UNIT_NANOS["h"])
    minutes, rest = divmod(rest, _UNIT_NANOS["m"])
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(_decimal_text(Decimal(rest) / NANOS_PER_SECOND) + "s")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Documents to protos
# --------------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class _Converter:
    """Fills protos from plain data, recording problems as (path, message)."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    # Paths whose value could not be converted; semantic checks under them are suppressed.
    bad_paths: set[str] = field(default_factory=set)

    def fail(self, path: str, message: str, *, bad: bool = True) -> None:
        self.problems.append((path, message))
        if bad:
            self.bad_paths.add(path)

    def fill(self, msg: Message, data: Mapping[Any, Any], path: str) -> None:
        descriptor: Any = msg.DESCRIPTOR
        fields = descriptor.fields_by_name
        for key, value in data.items():
            if not isinstance(key, str):
                self.fail(path, f"field names must be strings, got {_type_name(key)} {key!r}")
                continue
            if key == MERGE_KEY:
                self.fail(
                    path,
                    "YAML merge keys ('<<') are not supported: write the fields out in full",
                    bad=False,
                )
                continue
            fd = fields.get(key)
            if fd is None:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.fail(path, f"unknown field '{key}'{hint}", bad=False)
                continue
            if value is None:  # `policy:` with nothing under it: leave unset
                continue
            self.set_field(msg, fd, value, _join(path, key))

    def set_field(self, msg: Message, fd: Any, value: Any, path: str) -> None:
        if _is_map(fd):
            self.set_map(getattr(msg, fd.name), fd, value, path)
        elif fd.is_repeated:
            if not isinstance(value, list):
                self.fail(path, f"expected a list, got {_type_name(value)}")
                return
            container = getattr(msg, fd.name)
            for i, item in enumerate(value):
                item_path = f"{path}[{i}]"
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    self.add_message(container, fd, item, item_path)
                else:
                    converted = self.scalar(fd, item, item_path)
                    if converted is not None:
                        container.append(converted)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, fd.name)
            if fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
                duration = self.duration(value, path)
                if duration is not None:
                    sub.CopyFrom(duration)
            elif not isinstance(value, Mapping):
                self.fail(path, f"expected a mapping, got {_type_name(value)}")
            else:
                sub.SetInParent()
                self.fill(sub, value, path)
        else:
            converted = self.scalar(fd, value, path)
            if converted is not None:
                setattr(msg, fd.name, converted)

    def add_message(self, container: Any, fd: Any, item: Any, path: str) -> None:
        if fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
            duration = self.duration(item, path)
            if duration is not None:
                container.add().CopyFrom(duration)
        elif not isinstance(item, Mapping):
            self.fail(path, f"expected a mapping, got {_type_name(item)}")
        else:
            self.fill(container.add(), item, path)

    def set_map(self, container: Any, fd: Any, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {_type_name(value)}")
            return
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        for key, item in value.items():
            item_path = f"{path}[{key!r}]" if not isinstance(key, str) else _join(path, key)
            converted_key = self.scalar(key_fd, key, item_path, what="key")
            if converted_key is None:
                continue
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                if not isinstance(item, Mapping):
                    self.fail(item_path, f"expected a mapping, got {_type_name(item)}")
                else:
                    self.fill(container[converted_key], item, item_path)
                continue
            converted = self.scalar(value_fd, item, item_path)
            if converted is not None:
                container[converted_key] = converted

    def duration(self, value: Any, path: str) -> Duration | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(path, f"expected a duration like '2s' or '250ms', got {_type_name(value)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def scalar(self, fd: Any, value: Any, path: str, what: str = "") -> Any:
        prefix = f"{what}: " if what else ""
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            hint = " (quote it)" if isinstance(value, bool | int | float) else ""
            self.fail(path, f"{prefix}expected a string, got {_type_name(value)}{hint}")
            return None
        if kind == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.fail(path, f"{prefix}expected true or false, got {_type_name(value)}")
            return None
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            self.fail(path, f"{prefix}expected a number, got {_type_name(value)}")
            return None
        if kind in _INT_RANGES:
            low, high = _INT_RANGES[kind]
            if not isinstance(value, int) or isinstance(value, bool):
                self.fail(path, f"{prefix}expected an integer, got {_type_name(value)}")
                return None
            if value < low:
                self.fail(path, f"{prefix}must not be negative, got {value}")
                return None
            if value > high:
                self.fail(path, f"{prefix}must be at most {high}, got {value}")
                return None
            return value
        self.fail(path, f"{prefix}unsupported field type {kind}")
        return None


_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_UINT32: (0, UINT32_MAX),
    FieldDescriptor.TYPE_FIXED32: (0, UINT32_MAX),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
}


def _is_map(fd: Any) -> bool:
    return (
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.is_repeated
        and bool(fd.message_type.GetOptions().map_entry)
    )


def _normalise_status(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def _normalise(svc: Any) -> None:
    """Canonical spellings for what operators may write loosely (``deadline-exceeded``)."""
    policy = svc.policy
    if policy.HasField("retry"):
        names = [_normalise_status(n) for n in policy.retry.retry_on]
        del policy.retry.retry_on[:]
        policy.retry.retry_on.extend(names)
    if policy.HasField("circuit_breaker"):
        codes = [_normalise_status(n) for n in policy.circuit_breaker.failure_codes]
        del policy.circuit_breaker.failure_codes[:]
        policy.circuit_breaker.failure_codes.extend(codes)


# --------------------------------------------------------------------------------------------
# Semantic validation
# --------------------------------------------------------------------------------------------

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def validate_service(svc: Any) -> list[str]:
    """Semantic checks of a ``mesh.v1.Service``; each problem reads ``field.path: message``.
    An empty list means the service is valid."""
    return [f"{path}: {message}" for path, message in _validate(svc)]


def _validate(svc: Any) -> list[tuple[str, str]]:
    p = _Problems()
    _check_name(p, svc.name)
    _check_endpoints(p, svc.endpoints)
    if svc.HasField("policy"):
        _check_policy(p, svc.policy)
    return p.items


def _check_name(p: _Problems, name: str) -> None:
    if not name:
        p.add("name", "required")
    elif len(name) > 253 or not _NAME.fullmatch(name):
        p.add(
            "name",
            f"must be a lowercase DNS name (letters a-z, digits and '-', starting and ending "
            f"with a letter or digit, labels separated by '.'), got {name!r}",
        )


def _address_problem(address: str) -> str | None:
    if not address:
        return "required"
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            return f"must be host:port with an IPv6 host in brackets, got {address!r}"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r} in {address!r}"
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            return f"must be host:port, got {address!r}"
        if ":" in host:
            return f"IPv6 hosts must be in brackets, like [::1]:50051, got {address!r}"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return (
                f"host must be an IP address (xDS clients connect to addresses, they do not "
                f"resolve names), got {host!r}"
            )
    if not port.isascii() or not port.isdigit():
        return f"invalid port {port!r} in {address!r}"
    if len(port.lstrip("0")) > 5:
        return f"port must be between 1 and 65535, got a number of {len(port)} digits"
    if not 1 <= int(port) <= 65535:
        return f"port must be between 1 and 65535, got {int(port)}"
    return None


def _check_endpoints(p: _Problems, endpoints: Sequence[Any]) -> None:
    seen: dict[str, int] = {}
    for i, ep in enumerate(endpoints):
        path = f"endpoints[{i}]"
        problem = _address_problem(ep.address)
        if problem:
            p.add(f"{path}.address", problem)
        else:
            key = ep.address.lower()
            if key in seen:
                p.add(
                    f"{path}.address",
                    f"duplicate address {ep.address!r}, also endpoints[{seen[key]}]",
                )
            else:
                seen[key] = i
        if ep.weight > MAX_WEIGHT:
            p.add(f"{path}.weight", f"must be at most {MAX_WEIGHT}, got {ep.weight}")
    total = sum(min(ep.weight, MAX_WEIGHT) or 1 for ep in endpoints)
    if total > UINT32_MAX:
        p.add(
            "endpoints",
            f"the weights add up to {total}, more than xDS allows ({UINT32_MAX}); "
            "lower them or split the service",
        )


def _check_duration(
    p: _Problems, msg: Any, name: str, path: str, *, required: str | None = None
) -> int | None:
    """Checks a Duration field is within (0, 1 day]; returns its nanoseconds when set."""
    full = _join(path, name)
    if not msg.HasField(name):
        if required:
            p.add(full, required)
        return None
    d: Duration = getattr(msg, name)
    nanos = _nanos(d)
    if nanos <= 0:
        p.add(full, f"must be greater than 0, got {format_duration(d)}")
    elif nanos > _nanos(MAX_DURATION):
        p.add(full, f"must be at most 24h (1 day), got {format_duration(d)}")
    return nanos


def _check_rate(p: _Problems, value: float, path: str) -> None:
    if not 0.0 <= value <= 1.0:
        p.add(path, f"must be between 0 and 1, got {value!r}")


def _check_percent(p: _Problems, value: int, path: str) -> None:
    if value > 100:
        p.add(path, f"must be between 0 and 100, got {value}")


def _check_statuses(
    p: _Problems, names: Sequence[str], path: str, allowed: Sequence[str], what: str
) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        item = f"{path}[{i}]"
        if name not in allowed:
            if name in GRPC_STATUS_NAMES:
                p.add(item, f"{name!r} is not {what}; expected one of {', '.join(allowed)}")
            else:
                p.add(
                    item,
                    f"unknown gRPC status {name!r}; expected one of {', '.join(allowed)}",
                )
        elif name in seen:
            p.add(item, f"duplicate status {name!r}")
        seen.add(name)


def _check_policy(p: _Problems, policy: Any) -> None:
    _check_duration(p, policy, "timeout", "policy")
    if policy.lb not in LB_POLICIES:
        supported = ", ".join(x for x in LB_POLICIES if x)
        reason = UNSUPPORTED_LB_POLICIES.get(policy.lb)
        if reason is not None:
            p.add("policy.lb", f"{policy.lb!r} is not supported: {reason}; use one of {supported}")
        else:
            p.add(
                "policy.lb",
                f"unknown load balancing policy {policy.lb!r}; expected one of {supported}",
            )
    if policy.HasField("retry"):
        _check_retry(p, policy.retry, "policy.retry")
    if policy.HasField("circuit_breaker"):
        _check_breaker(p, policy.circuit_breaker, "policy.circuit_breaker")
    if policy.HasField("outlier_detection"):
        _check_outlier(p, policy.outlier_detection, "policy.outlier_detection")
    if policy.HasField("health_check"):
        _check_health(p, policy.health_check, "policy.health_check")


def _check_retry(p: _Problems, retry: Any, path: str) -> None:
    if not 1 <= retry.attempts <= 5:
        p.add(f"{path}.attempts", "must be between 1 and 5")
    _check_statuses(p, retry.retry_on, f"{path}.retry_on", RETRYABLE_STATUS_NAMES, "retryable")
    if retry.HasField("backoff"):
        bpath = f"{path}.backoff"
        base = _check_duration(p, retry.backoff, "base", bpath, required="required")
        top = _check_duration(p, retry.backoff, "max", bpath)
        if base is not None and top is not None and base > 0 and top < base:
            p.add(
                f"{bpath}.max",
                f"must be at least base ({format_duration(retry.backoff.base)}), "
                f"got {format_duration(retry.backoff.max)}",
            )


def _check_breaker(p: _Problems, cb: Any, path: str) -> None:
    _check_rate(p, cb.failure_rate, f"{path}.failure_rate")
    needs_window = cb.failure_rate != 0.0 or cb.HasField("slow_call")
    _check_duration(
        p,
        cb,
        "window",
        path,
        required="required when failure_rate or slow_call is set" if needs_window else None,
    )
    open_for = _check_duration(p, cb, "open_for", path)
    max_open_for = _check_duration(p, cb, "max_open_for", path)
    if open_for is not None and max_open_for is not None and 0 < max_open_for < open_for:
        p.add(
            f"{path}.max_open_for",
            f"must be at least open_for ({format_duration(cb.open_for)}), "
            f"got {format_duration(cb.max_open_for)}",
        )
    if cb.half_open_probes > MAX_HALF_OPEN_PROBES:
        p.add(
            f"{path}.half_open_probes",
            f"must be at most {MAX_HALF_OPEN_PROBES}, got {cb.half_open_probes}",
        )
    if cb.HasField("slow_call"):
        spath = f"{path}.slow_call"
        _check_duration(p, cb.slow_call, "threshold", spath, required="required")
        _check_rate(p, cb.slow_call.rate, f"{spath}.rate")
    _check_statuses(
        p, cb.failure_codes, f"{path}.failure_codes", GRPC_STATUS_NAMES, "a failure status"
    )


def _check_outlier(p: _Problems, od: Any, path: str) -> None:
    _check_duration(p, od, "interval", path)
    base = _check_duration(p, od, "base_ejection_time", path)
    top = _check_duration(p, od, "max_ejection_time", path)
    if base is not None and top is not None and 0 < top < base:
        p.add(
            f"{path}.max_ejection_time",
            f"must be at least base_ejection_time ({format_duration(od.base_ejection_time)}), "
            f"got {format_duration(od.max_ejection_time)}",
        )
    _check_percent(p, od.max_ejection_percent, f"{path}.max_ejection_percent")
    if od.HasField("failure_percentage"):
        fp = od.failure_percentage
        fpath = f"{path}.failure_percentage"
        _check_percent(p, fp.threshold, f"{fpath}.threshold")
        _check_percent(p, fp.enforcement_percentage, f"{fpath}.enforcement_percentage")
    if od.HasField("success_rate"):
        sr = od.success_rate
        _check_percent(p, sr.enforcement_percentage, f"{path}.success_rate.enforcement_percentage")


def _check_health(p: _Problems, hc: Any, path: str) -> None:
    interval = _check_duration(p, hc, "interval", path)
    timeout = _check_duration(p, hc, "timeout", path)
    if interval is not None and timeout is not None and 0 < interval < timeout:
        p.add(
            f"{path}.timeout",
            f"must be at most interval ({format_duration(hc.interval)}), "
            f"got {format_duration(hc.timeout)}",
        )
    # unhealthy_threshold / healthy_threshold: 0 means "use the default"; any other is fine.


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


_MAX_NESTING = 64
"""Deepest nesting of mappings and lists a document may have (deeper would exhaust the stack)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently, nesting
    deeper than ``_MAX_NESTING`` levels, and scalars Python cannot represent."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # Refused here already: the scanner's look-ahead costs O(depth) per token past this.
        if self.flow_level >= _MAX_NESTING:
            raise yaml.scanner.ScannerError(
                None, None, f"nested more than {_MAX_NESTING} levels deep", self.get_mark()
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > _MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {_MAX_NESTING} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; the base constructor reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    # The base constructor: SafeConstructor's would merge ``<<`` keys first.
    return yaml.constructor.BaseConstructor.construct_mapping(loader, node, deep=deep)


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value: str = loader.construct_scalar(node)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:  # escaped UTF-16 surrogate pairs, as JSON writes "\ud83d\ude00", become one character
            value = value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "invalid text: an unpaired surrogate escape (\\ud800-\\udfff)",
                node.start_mark,
            ) from None
    return value


def _checked_scalar(
    construct: Callable[[yaml.SafeLoader, yaml.ScalarNode], Any], what: str
) -> Callable[[_Loader, yaml.ScalarNode], Any]:
    """``construct`` with Python's errors for values it cannot hold (a date that does not
    exist, an integer of more than 4300 digits, a bad explicit ``!!int``) made YAML errors."""

    def checked(loader: _Loader, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, LookupError, AttributeError, OverflowError):
            text = str(node.value)
            shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {what} {shown}", node.start_mark
            ) from None

    return checked


# YAML 1.1 reads a number with an exponent but no dot (``1e-05``, JSON's way) as text; YAML
# 1.2 and JSON read it as a number, and so does this loader. Text of that form is written
# quoted (:class:`Dumper`), so what this module writes reads back the same.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
# A merge key ``<<`` is read as the plain key "<<" (not merged), so the converter can say it is
# not supported at its field path.
_Loader.add_constructor("tag:yaml.org,2002:merge", lambda loader, node: MERGE_KEY)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_safe = yaml.constructor.SafeConstructor
_Loader.add_constructor(
    "tag:yaml.org,2002:bool", _checked_scalar(_safe.construct_yaml_bool, "boolean")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:int", _checked_scalar(_safe.construct_yaml_int, "integer")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:float", _checked_scalar(_safe.construct_yaml_float, "number")
)
_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp", _checked_scalar(_safe.construct_yaml_timestamp, "date")
)


@dataclass
class _Document:
    source: str
    number: int
    label: str
    service: Any


def _usable_name(data: Mapping[Any, Any]) -> str | None:
    name = data.get("name")
    if isinstance(name, str) and name and len(name) <= 253 and name.isprintable():
        return name
    return None


def _yaml_documents(text: str) -> Iterator[Any]:
    return iter(yaml.load_all(text, Loader=_Loader))


def _load_text(text: str, source: str) -> tuple[list[_Document], list[str]]:
    documents: list[_Document] = []
    problems: list[str] = []
    number = 0
    try:
        for data in _yaml_documents(text):
            number += 1
            if data is None:
                continue
            if not isinstance(data, Mapping):
                problems.append(
                    f"{source}: document {number}: expected a mapping of service fields, "
                    f"got {_type_name(data)}"
                )
                continue
            name = _usable_name(data)
            label = f"{source}: document {number}" + (f" ({name})" if name else "")
            svc = config_pb2.Service()
            conv = _Converter()
            conv.fill(svc, data, "")
            _normalise(svc)
            found = list(conv.problems)
            for path, message in _validate(svc):
                if not any(_under(path, bad) for bad in conv.bad_paths):
                    found.append((path, message))
            problems.extend(
                f"{label}: {path}: {msg}" if path else f"{label}: {msg}" for path, msg in found
            )
            documents.append(_Document(source, number, label, svc))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark is not None else "document"
        message = exc.problem or exc.context or "invalid YAML"
        problems.append(f"{source}: {where}: {message}")
    except yaml.YAMLError as exc:
        problems.append(f"{source}: {exc}")
    return documents, problems


def _under(path: str, bad: str) -> bool:
    return path == bad or path.startswith((bad + ".", bad + "["))


def _duplicate_problems(documents: Sequence[_Document]) -> list[str]:
    problems: list[str] = []
    first: dict[str, _Document] = {}
    for doc in documents:
        name = doc.service.name
        if not name:
            continue
        earlier = first.get(name)
        if earlier is None:
            first[name] = doc
            continue
        where = (
            f"document {earlier.number}"
            if earlier.source == doc.source
            else f"{earlier.source} document {earlier.number}"
        )
        problems.append(f"{doc.label}: name: duplicate service {name!r}, first defined in {where}")
    return problems


def load_documents(text: str, source: str) -> list[Any]:
    """Parses YAML or JSON text holding one service per document into ``mesh.v1.Service``
    messages, validated. Raises ConfigError listing every problem of every document."""
    documents, problems = _load_text(text, source)
    problems.extend(_duplicate_problems(documents))
    if problems:
        raise ConfigError(problems)
    return [doc.service for doc in documents]


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_path(path: Path) -> list[Any]:
    """Loads a file, or every ``*.yaml``, ``*.yml`` and ``*.json`` directly in a directory
    (sorted by name). Raises ConfigError listing every problem of every file, and when they
    hold no service at all (an empty or comment-only file, ``---`` alone, no config files)."""
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES
        )
        sources = [(p, str(p.relative_to(path))) for p in files]
    else:
        sources = [(path, str(path))]
    documents: list[_Document] = []
    problems: list[str] = []
    for file, source in sources:
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{source}: no such file or directory")
            continue
        except UnicodeDecodeError as exc:
            problems.append(f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}")
            continue
        except OSError as exc:
            problems.append(f"{source}: cannot read: {exc.strerror or exc}")
            continue
        file_documents, file_problems = _load_text(text, source)
        documents.extend(file_documents)
        problems.extend(file_problems)
    problems.extend(_duplicate_problems(documents))
    if not problems and not documents:
        problems.append(f"{path}: no service documents")
    if problems:
        raise ConfigError(problems)
    return [doc.service for doc in documents]


# --------------------------------------------------------------------------------------------
# Protos to documents
# --------------------------------------------------------------------------------------------


def _message_to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields: list[Any] = list(msg.DESCRIPTOR.fields)
    for fd in fields:
        value = getattr(msg, fd.name)
        if _is_map(fd):
            if value:
                value_fd = fd.message_type.fields_by_name["value"]
                out[fd.name] = {k: _value_to_plain(value_fd, value[k]) for k in sorted(value)}
        elif fd.is_repeated:
            if value:
                out[fd.name] = [_value_to_plain(fd, item) for item in value]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                out[fd.name] = _value_to_plain(fd, value)
        elif value != fd.default_value:
            out[fd.name] = value
    return out


def _value_to_plain(fd: Any, value: Any) -> Any:
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
        return format_duration(value)
    return _message_to_dict(value)


class Dumper(yaml.SafeDumper):
    """SafeDumper that quotes text the loader would read as a number (``1e5``)."""


Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def service_to_dict(svc: Any) -> dict[str, Any]:
    """Plain data for ``svc``: only fields that are set, in proto field order, durations as
    ``"250ms"``. ``load_documents(dump_yaml(service_to_dict(s)), ...)`` gives back ``s``."""
    return _message_to_dict(svc)


def dump_yaml(data: Any) -> str:
    """One YAML document for ``data``, keys in their order, read back the same by the loader."""
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def dump_documents(services: Sequence[Any]) -> str:
    """Multi-document YAML for ``services``, one document each, fields in proto order."""
    return yaml.dump_all(
        [service_to_dict(s) for s in services], Dumper=Dumper, sort_keys=False, allow_unicode=True
    )
