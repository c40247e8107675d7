"""Where the eval's model generates: the swarm (default), or a Hugging Face directory in one
process (a gathered export, to check that it behaves like the swarm).

Both are a :class:`~inference.conversation.ConversationEngine` — the one prompt formatter,
tokenizer handling, window fitting, stop and EOS logic and tool-call syntax — so a task's
turns are the same on either. The swarm engine is ``ConversationEngine.connect`` on a
:class:`~inference.swarm_client.SwarmClient`, as ``node0-inference`` builds it; the local one
gives the engine :class:`LocalSession`, the pipeline-session interface over a
``transformers`` model with its KV-cache, sampled by the one sampler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from base.errors import CheckpointError
from base.sampler import SamplingParams, sample_token
from inference.conversation import ConversationEngine, GenerationSettings
from inference.tool_loop import Model, conversation_model


class LocalSession:
    """The :class:`~inference.pipeline_session.PipelineSession` interface on a whole model in
    this process: ``step(ids, position)`` feeds ``ids`` at ``position`` (cropping the cache
    first when it is earlier) and samples the next token with the canonical sampler."""

    def __init__(self, model, max_length: int) -> None:
        self.model = model
        self.max_length = max_length
        self.token_ids: list[int] = []
        self._cache = None

    async def open(self) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache()

    async def step(self, token_ids: list[int], position: int, *, sampling: SamplingParams | None,
                   return_logits: bool = False):  # fmt: skip
        return await asyncio.to_thread(self._step, token_ids, position, sampling, return_logits)

    def _step(self, token_ids, position, sampling, return_logits):
        import torch

        from proto.tensor_codec import encode

        if self._cache.get_seq_length() > position:
            self._cache.crop(position)
        ids = torch.tensor([token_ids], dtype=torch.int64)
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=self._cache, use_cache=True)
        logits = out.logits[0, -1].float()  # (vocab,)
        self.token_ids = self.token_ids[:position] + list(token_ids)
        token = sample_token(logits, sampling or SamplingParams(), position + len(token_ids))
        return SimpleNamespace(token=token, logits=encode(logits) if return_logits else None)

    async def close(self) -> None:
        self._cache = None


def local_engine(hf_dir: str | Path, adapters: dict[str, Path] | None = None) -> ConversationEngine:
    """An engine on the Hugging Face directory ``hf_dir`` (e.g. ``node0 gather``'s merged
    export), with PEFT ``adapters`` (name -> directory) loaded on it, all active.

    Raises:
        CheckpointError: the directory does not load.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from inference.conversation import _eos_token_ids
    from inference.tool_calls import format_for
    from models.registry import family_of

    hf_dir = Path(hf_dir)
    try:
        config = AutoConfig.from_pretrained(hf_dir)
        tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the Hugging Face directory {hf_dir}: {exc}") from exc
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
        model.base_model.set_adapter(names)
        model.eval()
    window = int(config.max_position_embeddings)
    mode = "chat" if tokenizer.chat_template else "completion"
    return ConversationEngine(
        lambda length, _adapters: LocalSession(model, length),
        tokenizer,
        prompt_format=mode,
        max_length=window,
        eos_token_ids=_eos_token_ids(hf_dir, tokenizer),
        tool_format=format_for(family_of(config).name),
    )


def swarm_engine(model: str, initial_peers: list[str], *, max_length: int | None = None,
                 step_timeout: float = 60.0):  # fmt: skip
    """An engine on the swarm (``initial_peers``) serving ``model``; returns it with the client
    to close."""
    from inference.swarm_client import SwarmClient

    client = SwarmClient(model, initial_peers)
    try:
        engine = ConversationEngine.connect(
            client, max_length=max_length, step_timeout=step_timeout
        )
    except BaseException:
        client.close()
        raise
    return engine, client


@dataclass
class EngineSessions:
    """A fresh conversation per task on ``engine``, with ``adapters``, answering with
    ``settings``: the ``Session`` the runner takes."""

    engine: ConversationEngine
    adapters: tuple[str, ...]
    settings: GenerationSettings

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Model]:
        conversation = self.engine.conversation(adapters=self.adapters)
        try:
            await conversation.open()
            yield conversation_model(conversation, self.settings)
        finally:
            await conversation.close()


SessionFactory = Callable[[], object]
