"""mesh-control: the control server of the mesh, its stores and ``meshctl``."""

__version__ = "0.1.0"
