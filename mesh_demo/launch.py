"""``mesh-demo``: the demo needs every part of the mesh (``pip install 'python-mesh[all]'``)."""

from __future__ import annotations

from control.launch import SERVER_MODULES
from mesh_core.extras import require


def mesh_demo() -> None:
    require("mesh-demo", "all", SERVER_MODULES)
    from mesh_demo.__main__ import main

    main()
