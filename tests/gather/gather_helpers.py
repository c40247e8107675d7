"""Helpers shared by the checkpoint gather tests (imported as a plain module)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

NUM_LAYERS = 6
STAGES = ((0, 2), (2, 5), (5, 6))
PROMPT_IDS = torch.tensor([[1, 5, 9, 33, 100, 7, 8, 200, 31]])


def stage_sources(model_dir: Path, stages=STAGES):
    """``[(manifest, state)]`` per stage, read from a local checkpoint."""
    from checkpoint_gather.sources import read_local_stage

    return [
        read_local_stage(
            model_dir, start, end, num_layers=NUM_LAYERS, source_id=f"peer-{i}/stage-{start}-{end}"
        )
        for i, (start, end) in enumerate(stages)
    ]


def load_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def logits(model, ids=PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def greedy(model, ids=PROMPT_IDS, new_tokens: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=new_tokens,
            do_sample=False,
            attention_mask=torch.ones_like(ids),
            pad_token_id=2,
        )
    return out[0, ids.shape[1] :].tolist()


def load_causal_lm(path: Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True, **kwargs
    ).eval()


@contextmanager
def stage_server(model_dir, spans=STAGES, *, peer_id="peer-a"):
    """One in-process daemon (executor + Stage + StageWeights services) on a free port."""
    from checkpoint_gather.weights_service import WeightsService
    from node.stage_service import StageService, start_grpc_server
    from pipeline_stages.executor import StageExecutor
    from pipeline_stages.loader import load_stage
    from pipeline_stages.sessions import SessionManager

    stages = {span: load_stage(model_dir, *span) for span in spans}
    executor = StageExecutor(
        str(model_dir),
        stages,
        SessionManager(max_sessions=2, max_cache_tokens=1024, idle_timeout=60),
    )
    weights = WeightsService(executor, peer_id=peer_id, max_message_bytes=1 << 20)
    server, port = start_grpc_server(
        StageService(executor, peer_id=peer_id, max_message_bytes=1 << 20),
        "127.0.0.1",
        0,
        max_workers=8,
        extra_servicers=(weights,),
    )
    try:
        yield executor, weights, f"127.0.0.1:{port}"
    finally:
        server.stop(0)
