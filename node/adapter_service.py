"""The daemon's ``Adapters`` service: ``LoadAdapter`` attaches a registered model version's
adapter at run time (:mod:`pipeline_stages.runtime_adapters`), and the client side that loads
a version on every daemon of a swarm."""

from __future__ import annotations

import logging

import grpc

from lora.stage_adapters import adapters as stage_adapters
from pipeline_stages.errors import abort_call
from pipeline_stages.executor import StageExecutor
from pipeline_stages.runtime_adapters import load_runtime_adapter
from proto import node0_adapters_pb2, node0_adapters_pb2_grpc

log = logging.getLogger(__name__)


class AdapterService(node0_adapters_pb2_grpc.AdaptersServicer):
    def __init__(self, executor: StageExecutor, on_change=None):
        self.executor = executor
        self.on_change = on_change  # called after an adapter was attached (re-announce)

    def add_to_server(self, server: grpc.Server) -> None:
        node0_adapters_pb2_grpc.add_AdaptersServicer_to_server(self, server)

    def LoadAdapter(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            loaded, tensors = load_runtime_adapter(
                self.executor,
                name=request.name,
                directory=request.path,
                sha256=request.sha256,
                base_model=request.base_model,
            )
        except Exception as exc:
            abort_call(context, exc, "LoadAdapter")
        if loaded and self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # the next heartbeat announces it anyway
                log.warning("re-announce after LoadAdapter failed", exc_info=True)
        held = sorted({n for s in self.executor.stages.values() for n in stage_adapters(s)})
        return node0_adapters_pb2.LoadAdapterResponse(loaded=loaded, tensors=tensors, adapters=held)
