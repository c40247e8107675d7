"""A pipeline stage of a decoder-only model: a contiguous range of decoder blocks.

Built from transformers' own blocks of the family (``decoder_layer_class``, ``norm_class``,
``rotary_class``, which a family's subclass names) and ``create_causal_mask``, so the arithmetic
is exactly the reference's. Modules sit under their global names (``model.layers.<global
index>``) so the state dict, the PEFT adapter keys and a gathered checkpoint share one naming
scheme; the first stage also owns the token embedding, the last the final norm and the LM head.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from models.ragged_batch import ATTENTION, CacheSlots, RaggedBatch, SessionKV, gemm_rows

# transformers' SDPA (what it picks for these ...ForCausalLM on CPU), registered under node0's
# name so that a call carrying a RaggedBatch attends per session (see models.ragged_batch)
ATTN_IMPLEMENTATION = ATTENTION


def stage_config(config: PretrainedConfig, start: int, end: int) -> PretrainedConfig:
    """The full config narrowed to ``end - start`` layers (local cache indices 0..n-1)."""
    local = copy.deepcopy(config)
    local.num_hidden_layers = end - start
    if getattr(local, "layer_types", None):
        local.layer_types = list(config.layer_types[start:end])
    local._attn_implementation = ATTN_IMPLEMENTATION
    return local


@dataclass(frozen=True)
class BlockInputs:
    """What every decoder block of one forward shares: mask, positions, rotary, cache."""

    mask: torch.Tensor | None
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    cache: DynamicCache | None


class _StageBody(nn.Module):
    def __init__(
        self, stage_cls: type[DecoderStage], config, start: int, end: int, first: bool, last: bool
    ):
        super().__init__()
        self.embed_tokens = (
            nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
            if first
            else None
        )
        self.layers = nn.ModuleDict(
            {
                str(g): stage_cls.decoder_layer_class(config, layer_idx=g - start)
                for g in range(start, end)
            }
        )
        self.norm = (
            stage_cls.norm_class(config.hidden_size, eps=config.rms_norm_eps) if last else None
        )


class DecoderStage(nn.Module):
    """Layers ``[start, end)`` of a decoder-only model; a family subclass names the blocks.

    ``forward`` takes token ids on the first stage and hidden states elsewhere; the last stage
    returns logits, every other stage the hidden states after its last block.
    """

    decoder_layer_class: ClassVar[type[nn.Module]]
    norm_class: ClassVar[type[nn.Module]]
    rotary_class: ClassVar[type[nn.Module]]

    def __init__(self, config: PretrainedConfig, start: int, end: int):
        super().__init__()
        if not 0 <= start < end <= config.num_hidden_layers:
            raise ValueError(f"bad layer range [{start}, {end}) for {config.num_hidden_layers}")
        self.full_config = config
        self.config = stage_config(config, start, end)
        self.start, self.end = start, end
        self.is_first = start == 0
        self.is_last = end == config.num_hidden_layers
        self.model = _StageBody(type(self), self.config, start, end, self.is_first, self.is_last)
        self.rotary_emb = self.rotary_class(config=self.config)
        self.lm_head = (
            nn.Linear(config.hidden_size, config.vocab_size, bias=False) if self.is_last else None
        )

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def new_session_kv(self, max_length: int) -> SessionKV:
        """An empty KV-cache for one inference session of up to ``max_length`` positions."""
        return SessionKV(self.end - self.start, max_length)

    def forward_batch(self, inputs: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
        """One step of several sessions: their new positions laid end to end.

        Args:
            inputs: ``(1, total_tokens)`` token ids on the first stage, else hidden states
                ``(1, total_tokens, hidden)``, segment after segment as ``batch`` orders them.
            batch: the segments; each session's cache is extended (commit with
                ``batch.commit()`` once every stage module of the step has run).

        Returns:
            hidden states ``(1, total_tokens, hidden)``, or on the last stage the logits of each
            segment's last position, ``(segments, vocab)``.
        """
        if inputs.shape[1] != batch.total_tokens:
            raise ValueError(f"{inputs.shape[1]} tokens for a batch of {batch.total_tokens}")
        hidden = self.model.embed_tokens(inputs) if self.is_first else inputs
        batch.padding = gemm_rows(batch.total_tokens, hidden.dtype) - batch.total_tokens
        if batch.padding:
            hidden = torch.nn.functional.pad(hidden, (0, 0, 0, batch.padding))
        hidden = self._blocks(hidden, batch.position_ids(hidden.device), ragged_batch=batch)
        if not self.is_last:
            return hidden[:, : batch.total_tokens]
        last = hidden[0, batch.last_token_indices()]  # (segments, hidden)
        return self.head_logits(self.model.norm(last))

    def decode_body(
        self, inputs: torch.Tensor, position_ids: torch.Tensor, slots: CacheSlots
    ) -> torch.Tensor:
        """One session's new positions through the blocks, written to its cache ``slots``.

        The part of :meth:`forward_batch` for a single segment that a compiler can trace whole
        (tensors in, tensors out; :mod:`models.compiled_decode`). Returns the hidden states
        ``(1, n, hidden)``, or on the last stage the final norm of the last position
        ``(1, hidden)``, which :meth:`head_logits` turns into logits outside the graph.
        """
        hidden = self.model.embed_tokens(inputs) if self.is_first else inputs
        hidden = self._blocks(hidden, position_ids, cache_slots=slots)
        return self.model.norm(hidden[0, -1:]) if self.is_last else hidden

    def _blocks(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, **attention
    ) -> torch.Tensor:
        """The decoder blocks in order; ``attention`` reaches :func:`ragged_attention`."""
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.model.layers.values():
            hidden = layer(
                hidden,
                attention_mask=None,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **attention,
            )
        return hidden

    def head_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits of a few rows, ``(m, vocab)``: the same product as ``lm_head(rows)``.

        The LM head is the largest product of a decode step (vocab x hidden), and MKL's speed at
        a few rows depends on the operands' layout. Measured on this machine, one thread,
        SmolLM2's 49152 x 576 head, median ms of ``x @ W^T`` (nn.Linear) / ``W @ x^T`` /
        ``x @ (W^T contiguous)``: m=1 11.0 / 10.5 / 5.3; m=2 26.6 / 5.9 / 11.9; m=4 21.9 / 8.9 /
        20.2; m=8 19.8 / 17.1 / 23.1; m=16 25.7 / 28.8 / 28.2. So one row uses a transposed copy
        of the weight (kept beside it, remade when the weight changes), up to 8 rows go as
        ``W @ x^T``, more as nn.Linear. That is MKL's float32 sgemm; in bfloat16 (oneDNN)
        nn.Linear is the fastest at every m measured (m=1 8.2 ms, 2 6.7, 8 8.3, 16 10.6).
        """
        head = self.lm_head
        m = rows.shape[0]
        if (
            type(head) is not nn.Linear
            or head.bias is not None
            or head.weight.dtype != torch.float32
            or head.weight.device.type != "cpu"
            or m > 8
            or rows.dim() != 2
        ):
            return head(rows)
        if m > 1:
            return torch.mm(head.weight, rows.t()).t()
        return torch.mm(rows, self._head_transposed())

    def _head_transposed(self) -> torch.Tensor:
        weight = self.lm_head.weight
        # an inference-mode tensor has no version counter (nothing changes it in place)
        version = None if weight.is_inference() else weight._version
        key = (weight.data_ptr(), version, weight.dtype, weight.device)
        cached = getattr(self, "_head_t", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, weight.detach().t().contiguous())
            self._head_t = cached
        return cached[1]

    def begin(
        self,
        inputs: torch.Tensor,
        *,
        cache: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, BlockInputs]:
        """The stage's entry: embed (first stage), then what every block of this forward shares.

        ``forward`` is ``begin``, then :meth:`run_block` for each of :attr:`blocks`, then (last
        stage) :meth:`logits`; a training micro-batch runs them as separate compute turns.
        """
        hidden = self.model.embed_tokens(inputs) if self.is_first else inputs
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = (torch.arange(hidden.shape[1], device=hidden.device) + past).unsqueeze(0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        return hidden, BlockInputs(mask, position_ids, position_embeddings, cache)

    @property
    def blocks(self) -> list[nn.Module]:
        """The decoder blocks in order."""
        return list(self.model.layers.values())

    def run_block(
        self, block: nn.Module, hidden: torch.Tensor, shared: BlockInputs
    ) -> torch.Tensor:
        return block(
            hidden,
            attention_mask=shared.mask,
            position_ids=shared.position_ids,
            past_key_values=shared.cache,
            use_cache=shared.cache is not None,
            position_embeddings=shared.position_embeddings,
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last stage: the final norm and the LM head, per position (row-independent)."""
        return self.lm_head(self.model.norm(hidden))

    def forward(
        self,
        inputs: torch.Tensor,
        *,
        cache: DynamicCache | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Run the stage.

        Args:
            inputs: token ids ``(batch, seq)`` on the first stage, else hidden states
                ``(batch, seq, hidden)``.
            cache: the session's KV-cache; positions continue from its length.
            attention_mask: optional 2D padding mask ``(batch, past + seq)``.
            logits_to_keep: on the last stage, compute logits for only the last N positions
                (0 = all).
        """
        hidden, shared = self.begin(inputs, cache=cache, attention_mask=attention_mask)
        for block in self.blocks:
            hidden = self.run_block(block, hidden, shared)
        if not self.is_last:
            return hidden  # (batch, seq, hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:, :]
        return self.logits(hidden)  # (batch, seq_kept, vocab)
