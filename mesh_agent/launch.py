"""The agent's console script, as light as the base install allows: it checks that the
``agent`` extra is installed before it imports the daemon."""

from __future__ import annotations

import sys
from typing import Final

from mesh_core.extras import DAEMON_MODULES, require

PRETTY_PRINTERS: Final = ("rich", "better_exceptions")
"""Optional packages structlog renders exceptions with when it finds them at import."""


def import_structlog_plain() -> None:
    """Imports structlog with its optional pretty printers out of its sight, so that it
    renders exceptions as plain tracebacks. The daemon logs JSON or plain lines; rich alone,
    wherever it happens to be installed (a development environment), would add about 5 MiB
    to the agent's memory. Only structlog's own import is affected: the packages import as
    usual afterwards, for anyone else."""
    if "structlog" in sys.modules:
        return
    hidden = [name for name in PRETTY_PRINTERS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


def mesh_agent() -> None:
    require("mesh-agent", "agent", DAEMON_MODULES)
    import_structlog_plain()
    from mesh_agent.daemon.cli import main

    main()
