"""Unit-test fixtures shared by modules; the in-process session streams are in
:mod:`tests.unit.xds_streams`."""

from __future__ import annotations

import pytest

from control.resources import build_resources
from mesh_xds.cache import SnapshotCache
from tests.unit.xds_streams import service


@pytest.fixture
def cache() -> SnapshotCache:
    """A snapshot cache at revision 1 with services ``a`` and ``b``, one endpoint each."""
    cache = SnapshotCache(build_resources)
    cache.set_services(1, [service("a", "10.0.0.1:1"), service("b", "10.0.0.2:1")])
    return cache
