"""``meshctl``'s console script, as light as the base install allows: it checks that the
``control`` extra is installed before it imports anything that needs it."""

from __future__ import annotations

from mesh_core.extras import require

MESHCTL_MODULES = ("yaml", "cryptography")


def meshctl() -> None:
    require("meshctl", "control", MESHCTL_MODULES)
    from control.meshctl.cli import main

    main()
