"""An agent's config cache filled with built resources, as if a control server had sent them
(delta xDS): for unit tests of what the agent reads from its cache."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2
from google.protobuf.message import Message

from mesh_agent.daemon.cache import ConfigCache


def agent_cache(
    resources: Mapping[str, Mapping[str, Message]],
    names: Mapping[str, Iterable[str]] | None = None,
) -> ConfigCache:
    """A cache holding ``names`` of each type of ``resources`` (by type URL); every resource
    of every type when ``names`` is None."""
    cache = ConfigCache(None, "node-1")
    wanted = names if names is not None else {t: list(r) for t, r in resources.items()}
    for type_url, chosen in wanted.items():
        packed = []
        for name in sorted(chosen):
            item = any_pb2.Any()
            item.Pack(resources[type_url][name])
            packed.append(item)
        assert cache.accept_delta(type_url, "v1", packed, []) is None
    return cache
