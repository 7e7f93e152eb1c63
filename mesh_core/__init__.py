"""The mesh's shared core: what the client library, the agent and the control server all use.

No module here imports the xDS protocol package, the agent daemon or the control server.
"""

__version__ = "0.1.0"
