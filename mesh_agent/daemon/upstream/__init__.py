"""The agent's upstream: its one ADS stream to the control plane, kept up by the
:mod:`~mesh_agent.daemon.upstream.client` over a :mod:`~mesh_agent.daemon.upstream.channel`,
in either flavour (:mod:`~mesh_agent.daemon.upstream.sotw`,
:mod:`~mesh_agent.daemon.upstream.delta`, sharing :mod:`~mesh_agent.daemon.upstream.stream`),
asking for what :mod:`~mesh_agent.daemon.upstream.interest` computes; and the ``upstream``
:mod:`~mesh_agent.daemon.upstream.component`."""
