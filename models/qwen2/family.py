"""The Qwen2 family (``Qwen2ForCausalLM``): Qwen2, Qwen2.5 and their instruct/coder variants."""

from __future__ import annotations

from transformers import Qwen2Config

from models.family import ModelFamily
from models.qwen2.gguf_names import LAYOUT
from models.qwen2.stage_module import Qwen2Stage
from models.qwen2.tensor_names import layer_shapes


def _unsupported(config) -> str | None:
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()) or getattr(
        config, "use_sliding_window", False
    ):
        return (
            "Qwen2 with sliding-window attention (use_sliding_window=true) is not supported; "
            "stages build full causal attention only"
        )
    return None


QWEN2 = ModelFamily(
    name="qwen2",
    display_name="Qwen2",
    architectures=("Qwen2ForCausalLM",),
    model_types=("qwen2",),
    config_class=Qwen2Config,
    stage_class=Qwen2Stage,
    layer_shapes=layer_shapes,
    gguf=LAYOUT,
    signature=("self_attn.q_proj.bias",),
    signature_note="Qwen2ForCausalLM, model_type qwen2: biased q/k/v projections",
    unsupported=_unsupported,
    tool_call_format="hermes",  # Qwen2/2.5 chat templates: <tool_call>{json}</tool_call>
)
