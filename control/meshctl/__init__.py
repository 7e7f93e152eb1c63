"""``meshctl``: the operator's command line for mesh-control.

Output meant for people goes to stdout; ``-o json`` / ``-o yaml`` print data for scripts.
Every failure exits non-zero with a one-line reason on stderr (``validate`` prints one line
per problem).
"""

import os

# grpc's C core writes TLS handshake failures to stderr at INFO level; meshctl says in one line
# what failed instead. The variable is read when grpc is first imported, so it is set here,
# before any module of meshctl imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
