"""Which failed calls were answered by a backend, and which are the mesh's own rejections.

The breaker must count only what backends answered: counting the mesh's own rejections
would let a breaker trip itself (an open circuit's fast-fails feeding the failure rate) or
trip on a config problem no backend is involved in. grpcio gives a client no way to tell
whether a call reached a server, so the mesh's own rejections are recognised by the status
details that grpc's C-core (1.85) and our interceptors produce:

===================================  =========================================================
details contain                      produced by
===================================  =========================================================
``circuit breaker drop``             grpcio's xDS ``max_requests`` limit (gRFC A32)
``does not exist``                   an xDS resource (listener, route, cluster) that is absent
``empty address list``               no endpoints, or none usable (all ejected or unhealthy)
``no children``, ``no healthy``      load balancing with nothing to pick
``No matching route``                the route configuration has no route for the call
``circuit for service``              a fast-fail of our own interceptor (never recorded)
===================================  =========================================================

A call aborted by fault injection (gRFC A33) carries the configured code, any code, with the
details ``Fault injected`` (C-core's own, exactly): the fault filter answered it before any
backend was chosen, so it is not evidence about the backend either.
"""

from __future__ import annotations

from typing import Final

MESH_REJECTION_MARKERS: Final = (
    "circuit breaker drop",
    "does not exist",
    "empty address list",
    "no children",
    "no healthy",
    "No matching route",
    "circuit for service",
)


INJECTED_FAULT: Final = "Fault injected"
NOT_ABOUT_THE_BACKEND: Final = frozenset({"CANCELLED", "PERMISSION_DENIED"})


def is_mesh_rejection(code: str, details: str | None) -> bool:
    """True when a failed call never reached a backend because the mesh refused it (or
    aborted it on purpose, as fault injection)."""
    if not details:
        return False
    if details == INJECTED_FAULT:
        return True
    if code != "UNAVAILABLE":
        return False
    return any(marker in details for marker in MESH_REJECTION_MARKERS)


def counts_for_breaker(code: str, details: str | None) -> bool:
    """Whether a finished call's outcome is evidence about the backend: successes and the
    backend's own failures are; the mesh's rejections are not, and neither is a call the
    caller cancelled (it says nothing about the service, and counting it as a success would
    reset a run of consecutive failures), nor a call the service's authorization refused
    (PERMISSION_DENIED: a caller's rights say nothing about the backend's health, and must
    never open its breaker)."""
    if code == "OK":
        return True
    if code in NOT_ABOUT_THE_BACKEND:
        return False
    return not is_mesh_rejection(code, details)
