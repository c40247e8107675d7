"""The daemon, its CLI and what they share (config, DHT records, errors)."""

import os

# gRPC's fork handlers crash or hang a child forked while other threads are inside gRPC; a
# daemon forks hivemind's averager after its gRPC server runs (a training job with replicas),
# and a client process that has used gRPC forks a DHT child. The children never use gRPC, so
# the handlers are not needed. Must be set before grpc is imported: every package that uses
# gRPC imports this one first (inference, training, checkpoint_gather, bench, tests).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
