"""gRPC channel settings shared by every client of a stage."""

from __future__ import annotations


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Options that let a channel send and receive messages up to ``max_message_bytes``."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
