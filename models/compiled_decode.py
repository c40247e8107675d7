"""A stage's decode step for one session as one compiled graph (``torch.compile``, inductor).

Why: a batch-1 swarm runs its stages one after another, so every stage process starts every
step after a pause, and on this kind of host a step after a pause runs its hundreds of small
operations (norms, rotary, residuals: about 2,200 dispatches for ten SmolLM2 blocks) far slower
than back to back (``bench.stage_idle``: 1.4x in bfloat16). Inductor fuses them into a few
generated C++ kernels around the same matrix products, so a step dispatches a few hundred
operations instead (BENCHMARKS.md, "Compiled decode step").

Only the common case is compiled: one session, one new position, a cache that already holds
its prompt. Everything else (prefill, batches of sessions, adapters) runs the eager
:meth:`DecoderStage.forward_batch`. The graph is the stage's own :meth:`DecoderStage.decode_body`
(transformers' blocks, attention through :func:`models.ragged_batch.write_and_attend`), so the
arithmetic is the eager step's: with inductor's ``emulate_precision_casts`` a fused kernel
rounds each intermediate to the stage dtype where eager does, and the tests find bfloat16
outputs equal to the eager step's (``torch.equal``); float32 ones within 5e-5 (fused reductions
sum in another order).

``dynamic=True``: three graphs, all built by :meth:`CompiledDecode.warm_up`, cover every cache
length and capacity; the compiled code is kept in inductor's on-disk cache, so a restarted
daemon compiles in seconds.
"""

from __future__ import annotations

import threading
import time

import torch
import torch._dynamo.config

from models.ragged_batch import CacheSlots, RaggedBatch, Segment, SessionKV
from models.stage_module import DecoderStage

# a fused kernel rounds where eager rounds (bfloat16/float16 intermediates), see the docstring;
# passed with the compile, not set in torch._inductor.config: that config is per thread in this
# torch, and a setting made on the importing thread did not reach a compile on another one
# (the bfloat16 graphs then differed from eager)
INDUCTOR_OPTIONS = {"emulate_precision_casts": True}
# every stage object compiles ``decode_body`` (one code object) anew, three graphs each (see
# warm_up): dynamo's default of 8 graphs per code object would leave a daemon that hosts a few
# stages, or moves, with an uncompiled step. Dynamo's config is per thread too: set on each
# thread that compiles or calls the step (_on_this_thread)
RECOMPILE_LIMIT = 256
_configured = threading.local()


def _on_this_thread() -> None:
    if not getattr(_configured, "done", False):
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        _configured.done = True


WARM_UP_POSITIONS = 4  # the scratch session's max_length: its buffers fill at the 3rd step


class CompiledDecode:
    """The one-session, one-token decode step of ``stage`` (compiled by :meth:`warm_up`)."""

    def __init__(self, stage: DecoderStage):
        self.stage = stage
        self._body = torch.compile(
            stage.decode_body, dynamic=True, fullgraph=True, options=INDUCTOR_OPTIONS
        )

    @staticmethod
    def takes(batch: RaggedBatch) -> bool:
        """Whether ``batch`` is the compiled case: one session's next position after others."""
        if len(batch.segments) != 1:
            return False
        segment = batch.segments[0]
        return segment.tokens == 1 and segment.kv.length > 0

    def __call__(self, inputs: torch.Tensor, kv: SessionKV) -> torch.Tensor:
        """What ``forward_batch(inputs, RaggedBatch([Segment(kv, n)]))`` returns; the caller
        commits the new positions (``kv.commit(n)``) as it would the batch."""
        _on_this_thread()
        # dynamo guards on strides: a view into a larger tensor would compile another graph
        inputs = inputs.clone(memory_format=torch.contiguous_format)
        n = inputs.shape[1]
        keys, values = kv.buffers(kv.length + n)
        position_ids = torch.arange(kv.length, kv.length + n, device=inputs.device).unsqueeze(0)
        out = self._body(inputs, position_ids, CacheSlots(keys, values, kv.length))
        return self.stage.head_logits(out) if self.stage.is_last else out

    def warm_up(self) -> float:
        """Compile now, on a scratch session (a daemon does this before it serves); seconds."""
        stage = self.stage
        started = time.perf_counter()
        weight = next(stage.parameters())  # the stage's dtype and device
        if stage.is_first:
            token = torch.zeros((1, 1), dtype=torch.int64, device=weight.device)
        else:
            shape = (1, 1, stage.full_config.hidden_size)
            token = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        # the graphs a session meets: a cache of one position (dynamo specialises sizes of 1),
        # any other length, and the step that fills the buffers (its cache slice is the
        # whole buffer, a contiguous tensor, which is a graph of its own)
        kv = stage.new_session_kv(WARM_UP_POSITIONS)
        with torch.inference_mode():
            batch = RaggedBatch([Segment(kv, 1)])
            stage.forward_batch(token, batch)
            batch.commit()
            while kv.length < WARM_UP_POSITIONS:
                self(token, kv)
                kv.commit(1)
        return time.perf_counter() - started
