"""The trainer's side of pipeline training: drive forward/backward/step across the stages."""

import base  # noqa: F401,E402  (turns gRPC fork handlers off before grpc loads)
