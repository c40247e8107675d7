"""The LLaMA family (``LlamaForCausalLM``): LLaMA 2/3, SmolLM2, TinyLlama, …"""

from __future__ import annotations

from transformers import LlamaConfig

from models.family import ModelFamily
from models.llama.gguf_names import LAYOUT
from models.llama.stage_module import LlamaStage
from models.llama.tensor_names import layer_shapes


def _unsupported(config) -> str | None:
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return (
            "LLaMA with attention/MLP biases (attention_bias/mlp_bias) is not supported; "
            "a checkpoint with q/k/v biases only is Qwen2"
        )
    return None


LLAMA = ModelFamily(
    name="llama",
    display_name="LLaMA",
    architectures=("LlamaForCausalLM",),
    model_types=("llama",),
    config_class=LlamaConfig,
    stage_class=LlamaStage,
    layer_shapes=layer_shapes,
    gguf=LAYOUT,
    unsupported=_unsupported,
    # SmolLM2 and the ChatML fine-tunes node0 serves call tools as <tool_call>{json}</tool_call>
    tool_call_format="hermes",
)
