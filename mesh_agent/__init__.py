"""mesh-agent: the node agent of the mesh, and the client library applications use."""

__version__ = "0.1.0"
