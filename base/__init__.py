"""The base layer: what every other package may import, and which imports nothing above it.

Errors and exit codes, the one config loader, the one atomic writer, hashing, DHT records and
the DHT start, route planning, the sampler and the self-describing banner. Nothing here imports
``node``, ``inference`` or any other package of the project except ``proto`` (the wire).
"""

import os

# gRPC's fork handlers crash or hang a child forked while other threads are inside gRPC; a
# daemon forks hivemind's averager after its gRPC server runs (a training job with replicas),
# and a client process that has used gRPC forks a DHT child. The children never use gRPC, so
# the handlers are not needed. Must be set before grpc is imported: every package that uses
# gRPC imports this one first (inference, training, checkpoint_gather, node, bench, tests).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
