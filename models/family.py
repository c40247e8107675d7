"""The interface a model family implements: what generic code may ask of a family.

A family folder (``models/llama``, ``models/qwen2``) builds one :class:`ModelFamily` and
registers it (:func:`models.registry.register_family`). Stages, gather, the exports, inspect
and stamp look a family up from a checkpoint's config and use only what is declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.tensor_names import EMBED, FINAL_NORM, LM_HEAD, layer_tensor_name

if TYPE_CHECKING:  # importing them pulls in numpy/gguf and torch/transformers
    from models.gguf_layout import GGUFLayout
    from models.stage_module import DecoderStage


def _no_objection(config) -> str | None:
    return None


@dataclass(frozen=True, eq=False)
class ModelFamily:
    """One model family: its stage module, tensor tables, GGUF layout and config class.

    Attributes:
        name: registry key, e.g. ``"qwen2"``.
        display_name: how messages name it, e.g. ``"Qwen2"``.
        architectures: Hugging Face ``architectures`` values it serves; the first is written
            on export.
        model_types: ``model_type`` values it serves; the first is written on export.
        config_class: the transformers config class (``Qwen2Config``).
        stage_class: the :class:`~models.stage_module.DecoderStage` subclass built from the
            family's transformers blocks.
        layer_shapes: per-layer HF suffix -> shape, from a config (global tensors are the
            shared :mod:`models.tensor_names` ones).
        gguf: the llama.cpp layout (names, Q/K permutation, metadata keys).
        signature: tensor-name fragments that tell this family's checkpoints from a LLaMA-style
            one (Qwen2: ``self_attn.q_proj.bias``); empty for the plain layout.
        signature_note: what the signature means, for messages ("biased q/k/v projections").
        unsupported: a reason a config of this family cannot be served (None: it can).
        tool_call_format: the syntax the family's chat models use to call tools, a key of
            ``inference.tool_calls.FORMATS`` (the OpenAI API and the tool loop parse replies
            with it and describe offered tools in it).
    """

    name: str
    display_name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    config_class: type
    stage_class: type[DecoderStage]
    layer_shapes: Callable[[Any], dict[str, tuple[int, ...]]]
    gguf: GGUFLayout
    signature: tuple[str, ...] = ()
    signature_note: str = ""
    unsupported: Callable[[Any], str | None] = _no_objection
    tool_call_format: str = "hermes"

    @property
    def architecture(self) -> str:
        """The ``architectures[0]`` an export writes."""
        return self.architectures[0]

    @property
    def model_type(self) -> str:
        """The ``model_type`` an export writes."""
        return self.model_types[0]

    def expected_shapes(
        self, config, layers: range, *, first: bool, last: bool
    ) -> dict[str, tuple[int, ...]]:
        """Every tensor a stage covering ``layers`` needs, with its shape from the config.

        Ordered embedding, layers in order (each in :attr:`layer_shapes` order), final norm,
        LM head: the order a GGUF file lists them.
        """
        per_layer = self.layer_shapes(config)
        shapes: dict[str, tuple[int, ...]] = {}
        if first:
            shapes[EMBED] = (config.vocab_size, config.hidden_size)
        for layer in layers:
            for suffix, shape in per_layer.items():
                shapes[layer_tensor_name(layer, suffix)] = shape
        if last:
            shapes[FINAL_NORM] = (config.hidden_size,)
            shapes[LM_HEAD] = (config.vocab_size, config.hidden_size)
        return shapes

    def declares(self, config) -> bool:
        """Whether ``config`` (object or dict) declares this family's architecture and type."""
        declared = set(_get(config, "architectures") or [])
        return _get(config, "model_type") in self.model_types and bool(
            declared & set(self.architectures)
        )

    def export_config(self, config):
        """A clean config of :attr:`config_class` (architectures/model_type set, fp32, no
        quantization) from a config object or dict, as an export writes it."""
        data = dict(config) if isinstance(config, Mapping) else config.to_dict()
        data.pop("quantization_config", None)
        data.pop("transformers_version", None)
        data["architectures"] = [self.architecture]
        data["model_type"] = self.model_type
        data["dtype"] = "float32"
        return self.config_class(**data)

    def build_stage(self, config, start: int, end: int) -> DecoderStage:
        """The stage module for layers ``[start, end)`` (weights as the current device makes
        them: build under ``torch.device("meta")`` and load, as the stage loader does)."""
        return self.stage_class(config, start, end)


def _get(config, key: str):
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
