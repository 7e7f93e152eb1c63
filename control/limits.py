"""``mesh-control serve``'s limit flags: ``--max-*`` and ``--admin-write*``, one per field of
:class:`mesh_core.limits.Limits` (0 turns a limit off)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Final

from mesh_core.limits import KiB, Limits, MiB

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
    """The :class:`Limits` the flags of :func:`add_arguments` give; raises ConfigError."""
    return Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
