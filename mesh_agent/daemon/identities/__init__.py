"""Service identities on the node: the agent's ``identities`` component.

For every service identity the node should hold (:mod:`.keeper`: its registered services
that have ``security.hosts``, and ``--identity``), the agent makes a key on the node, sends
the control server a CSR for ``spiffe://TD/service/NAME`` (:mod:`.keys`), and writes the
certificate, key and trust bundle it gets where grpcio's ``file_watcher`` certificate
provider reads them (:mod:`.files`; the paths are :func:`mesh_core.identity_files.
identity_paths`). It renews at half-life, retries with backoff, and shows each identity in
``GetAgentStatus``. The component is :mod:`.component`.
"""

from mesh_agent.daemon.identities.component import IdentitiesComponent
from mesh_agent.daemon.identities.keeper import HeldIdentity, IdentityKeeper

__all__ = ["HeldIdentity", "IdentitiesComponent", "IdentityKeeper"]
