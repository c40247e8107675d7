"""The daemon (``node0 serve``, the local swarm) and the ``node0`` command line."""

import base  # noqa: F401  (turns gRPC fork handlers off before grpc loads)
