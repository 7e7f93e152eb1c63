"""Plain data (parsed YAML or JSON) to ``mesh.v1.Service`` messages and back.

Documents are converted by walking the message descriptors (not ``json_format``) so that
durations read naturally (``250ms``, ``1m30s``) and every problem names its field path;
:class:`Converter` records problems instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from mesh_core.durations import format_duration, parse_duration
from mesh_core.errors import ConfigError
from mesh_core.policy import UINT32_MAX

PERCENT_FIELDS = frozenset({"mesh.v1.SloPolicy.success"})
"""Number fields in percent, which also take a string with a ``%`` sign (``99.9%``) and are
written back that way."""

MERGE_KEY = "<<"
"""A YAML merge key, read as a plain key so that it is refused at its field path."""


def type_name(value: object) -> str:
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


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class Converter:
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
                self.fail(path, f"field names must be strings, got {type_name(key)} {key!r}")
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
            self.set_field(msg, fd, value, join_path(path, key))

    def set_field(self, msg: Message, fd: Any, value: Any, path: str) -> None:
        if _is_map(fd):
            self.set_map(getattr(msg, fd.name), fd, value, path)
        elif fd.is_repeated:
            if not isinstance(value, list):
                self.fail(path, f"expected a list, got {type_name(value)}{_list_hint(fd, value)}")
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
                self.fail(path, f"expected a mapping, got {type_name(value)}")
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
            self.fail(path, f"expected a mapping, got {type_name(item)}")
        else:
            self.fill(container.add(), item, path)

    def set_map(self, container: Any, fd: Any, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {type_name(value)}")
            return
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        for key, item in value.items():
            item_path = f"{path}[{key!r}]" if not isinstance(key, str) else join_path(path, key)
            converted_key = self.scalar(key_fd, key, item_path, what="key")
            if converted_key is None:
                continue
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                if not isinstance(item, Mapping):
                    self.fail(item_path, f"expected a mapping, got {type_name(item)}")
                else:
                    self.fill(container[converted_key], item, item_path)
                continue
            converted = self.scalar(value_fd, item, item_path)
            if converted is not None:
                container[converted_key] = converted

    def duration(self, value: Any, path: str) -> Duration | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(path, f"expected a duration like '2s' or '250ms', got {type_name(value)}")
            return None
        try:
            return parse_duration(value)
        except ConfigError as exc:
            self.fail(path, str(exc))
            return None

    def scalar(self, fd: Any, value: Any, path: str, what: str = "") -> Any:
        prefix = f"{what}: " if what else ""
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            hint = " (quote it)" if isinstance(value, bool | int | float) else ""
            self.fail(path, f"{prefix}expected a string, got {type_name(value)}{hint}")
            return None
        if kind == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            self.fail(path, f"{prefix}expected true or false, got {type_name(value)}")
            return None
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if fd.full_name in PERCENT_FIELDS:
                return self.percent(value, path, prefix)
            self.fail(path, f"{prefix}expected a number, got {type_name(value)}")
            return None
        if kind in _INT_RANGES:
            low, high = _INT_RANGES[kind]
            if not isinstance(value, int) or isinstance(value, bool):
                self.fail(path, f"{prefix}expected an integer, got {type_name(value)}")
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

    def percent(self, value: Any, path: str, prefix: str) -> float | None:
        text = value.strip() if isinstance(value, str) else ""
        if text.endswith("%"):
            try:
                number = float(text[:-1])
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        self.fail(
            path, f"{prefix}expected a percentage like 99.9 or '99.9%', got {type_name(value)}"
        )
        return None


def _list_hint(fd: Any, value: Any) -> str:
    """For a mapping given where a list of named entries goes (``subsets: {v1: ...}``): how to
    write it."""
    if not isinstance(value, Mapping) or fd.type != FieldDescriptor.TYPE_MESSAGE:
        return ""
    if "name" not in fd.message_type.fields_by_name or not value:
        return ""
    first = next(iter(value))
    return f"; write one entry per item, like '- name: {first}' with its fields beside it"


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


def _normalise_retry(retry: Any) -> None:
    names = [_normalise_status(n) for n in retry.retry_on]
    del retry.retry_on[:]
    retry.retry_on.extend(names)


def normalise(svc: Any) -> None:
    """Canonical spellings for what operators may write loosely (``deadline-exceeded``)."""
    policy = svc.policy
    if policy.HasField("retry"):
        _normalise_retry(policy.retry)
    for route in svc.routes:
        if route.policy.HasField("retry"):
            _normalise_retry(route.policy.retry)
        if route.fault.HasField("abort"):
            route.fault.abort.status = _normalise_status(route.fault.abort.status)
    if policy.HasField("circuit_breaker"):
        codes = [_normalise_status(n) for n in policy.circuit_breaker.failure_codes]
        del policy.circuit_breaker.failure_codes[:]
        policy.circuit_breaker.failure_codes.extend(codes)


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
        elif fd.type == FieldDescriptor.TYPE_MESSAGE or fd.has_presence:
            if msg.HasField(fd.name):
                out[fd.name] = _value_to_plain(fd, value)
        elif value != fd.default_value:
            out[fd.name] = _value_to_plain(fd, value)
    return out


def _value_to_plain(fd: Any, value: Any) -> Any:
    if fd.full_name in PERCENT_FIELDS:
        return f"{value!r}%"  # repr: the shortest text that reads back as the same float
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    if fd.message_type.full_name == Duration.DESCRIPTOR.full_name:
        return format_duration(value)
    return _message_to_dict(value)


def service_to_dict(svc: Any) -> dict[str, Any]:
    """Plain data for ``svc``: only fields that are set, in proto field order, durations as
    ``"250ms"``. ``load_documents(dump_yaml(service_to_dict(s)), ...)`` gives back ``s``."""
    return _message_to_dict(svc)
