import base  # noqa: F401,E402  (turns gRPC fork handlers off before grpc loads)
