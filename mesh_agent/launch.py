"""The agent's console script, as light as the base install allows: it checks that the
``agent`` extra is installed before it imports the daemon."""

from __future__ import annotations

from mesh_core.extras import DAEMON_MODULES, require


def mesh_agent() -> None:
    require("mesh-agent", "agent", DAEMON_MODULES)
    from mesh_agent.daemon.cli import main

    main()
