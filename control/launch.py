"""``mesh-control``'s console script, as light as the base install allows: it checks that the
``control`` extra is installed before it imports anything that needs it."""

from __future__ import annotations

from mesh_core.extras import DAEMON_MODULES, require


def mesh_control() -> None:
    require("mesh-control", "control", DAEMON_MODULES)
    from control.cli import main

    main()
