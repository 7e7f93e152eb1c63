"""Service configuration: YAML/JSON documents to ``mesh.v1.Service`` protos and back.

:func:`load_documents` and :func:`load_path` (:mod:`~control.config.loading`) collect every
problem of every document and raise one :class:`~mesh_core.errors.ConfigError` whose lines read
like::

    orders.yaml: document 1 (orders): policy.retry.attempts: must be between 1 and 5

:func:`validate_service` (:mod:`mesh_core.validation`, since the agent checks registrations with
it too) holds the semantic rules, shared with the admin API; :mod:`~control.config.convert`
walks the protobuf descriptors both ways.
"""

from control.config.convert import service_to_dict
from control.config.loading import (
    CONFIG_SUFFIXES,
    Dumper,
    dump_documents,
    dump_yaml,
    load_documents,
    load_path,
)
from mesh_core.validation import validate_service

__all__ = [
    "CONFIG_SUFFIXES",
    "Dumper",
    "dump_documents",
    "dump_yaml",
    "load_documents",
    "load_path",
    "service_to_dict",
    "validate_service",
]
