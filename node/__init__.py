"""The daemon, its CLI and what they share (config, DHT records, errors)."""

import os

# gRPC's fork handlers crash a child forked while other threads are inside gRPC; a daemon forks
# hivemind's averager process after its gRPC server runs (a training job with replicas). The
# child never uses gRPC, so the handlers are not needed. Must be set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
