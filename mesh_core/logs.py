"""structlog set-up shared by the daemons and CLIs: JSON lines when stderr is not a terminal,
readable key=value lines when it is. Logs go to stderr; stdout stays for command output."""

from __future__ import annotations

import logging
import os
import sys

import structlog
from opentelemetry import trace


def add_trace_context(
    logger: object, method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Adds ``trace_id`` and ``span_id`` of the span current where the line is written."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    """Configures structlog once per process; ``MESH_LOG_LEVEL`` and ``MESH_LOG_FORMAT``
    (``json`` or ``console``) override the defaults."""
    name = (level or os.environ.get("MESH_LOG_LEVEL") or "info").upper()
    fmt = os.environ.get("MESH_LOG_FORMAT", "")
    if json is None:
        json = fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
