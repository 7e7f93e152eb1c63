"""``mesh-demo``: the demo needs every part of the mesh (``pip install 'python-mesh[all]'``)."""

from __future__ import annotations

from mesh_core.extras import DAEMON_MODULES, require


def mesh_demo() -> None:
    require("mesh-demo", "all", DAEMON_MODULES)
    from mesh_demo.__main__ import main

    main()
