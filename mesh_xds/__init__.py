"""The xDS v3 protocol on the server side, apart from what is served: snapshots and their
cache, the state-of-the-world and delta sessions, the ADS and CSDS servicers."""

__version__ = "0.1.0"
