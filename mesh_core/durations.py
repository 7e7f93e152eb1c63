"""Durations as operators write them (``2s``, ``250ms``, ``1m30s``) and as protobuf holds
them (``google.protobuf.Duration``), both ways."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from google.protobuf.duration_pb2 import Duration

from mesh_core.errors import ConfigError
from mesh_core.policy import NANOS_PER_SECOND

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
        raise ConfigError(f"invalid duration {original!r}: finer than a nanosecond")
    if nanos > _PROTO_MAX_SECONDS * NANOS_PER_SECOND:
        raise ConfigError(f"invalid duration {original!r}: too large")
    return int(nanos)


def parse_duration(text: str | int | float) -> Duration:
    """Parses ``"2s"``, ``"250ms"``, ``"1.5s"``, ``"100us"``, ``"1m30s"``, ``"1h"``; a bare
    number (or numeric string) is seconds. Raises ConfigError when negative or malformed."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConfigError(
            f"invalid duration {text!r}: expected a string like '2s' or '250ms' or a number of "
            "seconds"
        )
    if isinstance(text, int | float):
        try:
            seconds = Decimal(repr(text)) if isinstance(text, float) else Decimal(text)
        except InvalidOperation:
            raise ConfigError(f"invalid duration {text!r}") from None
        if not seconds.is_finite():
            raise ConfigError(f"invalid duration {text!r}: must be finite")
        if seconds < 0:
            raise ConfigError(f"invalid duration {text!r}: must not be negative")
        return _duration_from_nanos(_nanos_from_decimal(seconds, text))
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ConfigError(f"invalid duration {text!r}: must not be negative")
    if _BARE_NUMBER.fullmatch(stripped):
        return _duration_from_nanos(_nanos_from_decimal(Decimal(stripped.lstrip("+")), text))
    body = stripped.lstrip("+")
    if not _DURATION.fullmatch(body):
        raise ConfigError(
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


def nanos(d: Duration) -> int:
    return int(d.seconds) * NANOS_PER_SECOND + int(d.nanos)


def _decimal_text(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(d: Duration) -> str:
    """The shortest natural form of ``d``: ``"2s"``, ``"250ms"``, ``"1m30s"``, ``"1.5s"``.
    :func:`parse_duration` reads every result back to the same value."""
    total = nanos(d)
    if total == 0:
        return "0s"
    if total < 0:
        return "-" + format_duration(_duration_from_nanos(-total))
    if total < NANOS_PER_SECOND:
        for unit in ("ms", "us"):
            if total >= _UNIT_NANOS[unit]:
                return _decimal_text(Decimal(total) / _UNIT_NANOS[unit]) + unit
        return f"{total}ns"
    hours, rest = divmod(total, _UNIT_NANOS["h"])
    minutes, rest = divmod(rest, _UNIT_NANOS["m"])
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(_decimal_text(Decimal(rest) / NANOS_PER_SECOND) + "s")
    return "".join(parts)


_DAYS = re.compile(rf"({_NUMBER})d(.*)", re.S)


def parse_period(text: str) -> float:
    """Seconds in a span of time as an operator gives one on a command line: a duration
    (``90m``, ``1h30m``) that may start with days (``30d``, ``1d12h``). Raises ConfigError
    naming the text."""
    original = text
    text = text.strip()
    days = Decimal(0)
    match = _DAYS.fullmatch(text)
    if match is not None:
        days, text = Decimal(match.group(1)), match.group(2)
    try:
        rest = parse_duration(text).ToNanoseconds() / 1e9 if text else 0.0
    except ConfigError:
        raise ConfigError(
            f"invalid period {original!r}: expected a number with a unit, like '30d', '12h', "
            "'90m' or '1d12h' (units d, h, m, s)"
        ) from None
    seconds = float(days) * 86400 + rest
    if not seconds > 0:
        raise ConfigError(f"invalid period {original!r}: must be more than zero")
    return seconds
