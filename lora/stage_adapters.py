"""Named PEFT LoRA adapters on a pipeline stage's own layers.

A stage (:class:`~models.stage_module.DecoderStage`) keeps its modules under their global names
(``model.layers.<global index>.self_attn.q_proj``), so ``peft.inject_adapter_in_model`` on the
stage gives adapter tensors whose names equal the full model's. Adapter state dicts here use the
key format of PEFT's saved adapters (``base_model.model.model.layers.12.self_attn.q_proj.
lora_A.weight``, no adapter name): the union of every stage's dict *is* the full-model adapter
and loads with ``PeftModel.from_pretrained`` (see :mod:`lora.peft_export`).

Initialisation is deterministic and independent of the layer range: each ``lora_A`` is drawn
from a generator seeded with ``(init_seed, adapter name, global tensor name)`` with PEFT's own
distribution (Kaiming-uniform, a = sqrt(5)); ``lora_B`` starts at zero. PEFT's default init
draws from the global RNG in module order, which a stage starting at layer 12 cannot reproduce;
:func:`deterministic_init_` works on any module (a stage, a ``LlamaForCausalLM``, a
``PeftModel``), so a whole-model reference and the union of the stages start identical.

Several adapters can live on one stage (task adapters such as ``bead-creation`` and
``code-review``). Which ones a forward uses is per request: :func:`use_adapters` takes the
stage's adapter lock, activates the set and restores the previous one. *Stacked* means PEFT's
multiple active adapters: every targeted layer computes ``W x + sum_i s_i B_i A_i x`` (each
adapter's own scale ``s_i = alpha_i / r_i``), with no merged weights — switching is a pointer
swap on each LoRA layer, not a weight copy. A KV-cache was computed with one adapter set, so an
inference session must use the same set on every step.
"""

from __future__ import annotations

import hashlib
import math
import threading
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from base.errors import CheckpointError, RequestError
from lora.config import LoraSettings, check_adapter_name

PEFT_PREFIX = "base_model.model."  # prefix of keys in PEFT's saved adapter files
_LORA_PARAMS = ("lora_A", "lora_B")

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_registry: weakref.WeakKeyDictionary[nn.Module, dict[str, LoraSettings]] = (
    weakref.WeakKeyDictionary()
)
_layers: weakref.WeakKeyDictionary[nn.Module, list[LoraLayer]] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def adapter_lock(model: nn.Module) -> threading.RLock:
    """The lock that guards ``model``'s active-adapter state (one per module, reentrant).

    Hold it for a forward that depends on the active set and for optimizer steps that change
    adapter tensors another request may be reading.
    """
    with _registry_lock:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def adapters(model: nn.Module) -> dict[str, LoraSettings]:
    """The adapters attached to ``model`` through :func:`attach_adapter`, by name."""
    return dict(_registry.get(model, {}))


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _global_name(module_name: str) -> str:
    """Module name relative to the full ``LlamaForCausalLM`` (PeftModel wrapper stripped)."""
    return module_name.removeprefix(PEFT_PREFIX)


def _seed_for(seed: int, adapter: str, tensor_name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{adapter}\0{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def deterministic_init_(model: nn.Module, adapter: str, seed: int) -> int:
    """Re-initialise adapter ``adapter`` on every LoRA layer of ``model`` from ``seed``.

    ``lora_A`` ~ Kaiming-uniform(a = sqrt(5)) from a generator seeded by
    ``(seed, adapter, global name of the A tensor)``; ``lora_B`` = 0. Returns the number of
    layers initialised.
    """
    count = 0
    for name, layer in _lora_layers(model):
        if adapter not in layer.lora_A:
            continue
        weight_a = layer.lora_A[adapter].weight  # (rank, in_features)
        key = f"{_global_name(name)}.lora_A.weight"
        generator = torch.Generator().manual_seed(_seed_for(seed, adapter, key))
        # drawn in float32 on the CPU, so the values are the same whatever device holds A
        drawn = torch.empty(weight_a.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(drawn, a=math.sqrt(5), generator=generator)
        weight_a.copy_(drawn)
        layer.lora_B[adapter].weight.zero_()
        count += 1
    return count


def attach_adapter(model: nn.Module, name: str, settings: LoraSettings) -> int:
    """Add LoRA adapter ``name`` to every targeted linear layer of ``model`` (in place).

    Works on a :class:`DecoderStage` (its own layers only) or a whole ``LlamaForCausalLM``. The
    base weights are frozen; the active adapter set is left as it was (a model's first adapter
    becomes active). The adapter lives on the base's device in float32 whatever the base's
    dtype, as ``get_peft_model(..., autocast_adapter_dtype=True)`` keeps it: PEFT casts a
    layer's input to the adapter's dtype and the sum back to the base's. Returns the number of
    adapted layers.
    """
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import cast_adapter_dtype

    check_adapter_name(name)
    with adapter_lock(model):
        existing = _registry.setdefault(model, {})
        if name in existing:
            raise ValueError(f"adapter {name!r} is already attached")
        previous = _active_set(model)
        with warnings.catch_warnings():  # a second adapter is intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(settings.to_peft(), model, adapter_name=name)
        # inject_adapter_in_model makes the adapter in the base's dtype: float32 before the init
        cast_adapter_dtype(model, adapter_name=name, autocast_adapter_dtype=True)
        count = deterministic_init_(model, name, settings.init_seed)
        if count == 0:
            raise ValueError(
                f"no layer of the model matches target_modules {list(settings.target_modules)}"
            )
        existing[name] = settings
        _layers[model] = [layer for _, layer in _lora_layers(model)]
        for param_name, param in model.named_parameters():
            if not _is_lora_param(param_name):
                param.requires_grad_(False)
        _set_active(model, previous if previous else [name])
        return count


def _is_lora_param(param_name: str) -> bool:
    return any(f".{kind}." in param_name for kind in _LORA_PARAMS)


def _cached_layers(model: nn.Module) -> list[LoraLayer]:
    cached = _layers.get(model)
    return cached if cached is not None else [layer for _, layer in _lora_layers(model)]


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    """Every LoRA layer of ``model`` (cached once adapters are attached)."""
    return _cached_layers(model)


def _active_set(model: nn.Module) -> list[str]:
    for layer in _cached_layers(model):
        return [] if layer.disable_adapters else list(layer.active_adapters)
    return []


def _set_active(model: nn.Module, names: Sequence[str]) -> None:
    # Set the attribute directly: peft's set_adapter() also flips requires_grad on the adapter
    # tensors, which would silently freeze or unfreeze the adapter a training job is updating.
    for layer in _cached_layers(model):
        layer._active_adapter = list(names)
        layer._disable_adapters = False


def active_adapters(model: nn.Module) -> list[str]:
    """The adapter names the next forward of ``model`` uses (empty: base model only)."""
    return _active_set(model)


def _check_known(model: nn.Module, names: Sequence[str]) -> list[str]:
    known = _registry.get(model, {})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(
            f"unknown adapter(s) {unknown}; this stage holds {sorted(known)}",
            hint="attach the adapter on every stage of the route first",
        )
    if len(set(names)) != len(names):
        raise RequestError(f"adapter list has duplicates: {list(names)}")
    return list(names)


@contextmanager
def use_adapters(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Activate exactly ``names`` (stacked; ``[]`` = base model) for the body, then restore.

    Holds :func:`adapter_lock` for the whole body, so concurrent requests with different
    adapter sets on one stage never see each other's set. Run one forward step inside.
    """
    names = _check_known(model, names)
    with adapter_lock(model):
        previous = _active_set(model)
        _set_active(model, names)
        try:
            yield
        finally:
            _set_active(model, previous)


def set_active_adapters(model: nn.Module, names: Sequence[str]) -> None:
    """Make ``names`` the default active set (used when a forward does not pick one)."""
    names = _check_known(model, names)
    with adapter_lock(model):
        _set_active(model, names)


def _adapter_tensors(model: nn.Module, adapter: str) -> Iterator[tuple[str, nn.Parameter]]:
    """(PEFT file key, parameter) of one adapter, sorted by key (stable across replicas)."""
    items = []
    for name, layer in _lora_layers(model):
        if adapter not in layer.lora_A:
            continue
        base = PEFT_PREFIX + _global_name(name)
        items.append((f"{base}.lora_A.weight", layer.lora_A[adapter].weight))
        items.append((f"{base}.lora_B.weight", layer.lora_B[adapter].weight))
    if not items:
        raise RequestError(f"no adapter named {adapter!r} on this model")
    yield from sorted(items, key=lambda item: item[0])


def adapter_parameters(
    model: nn.Module, adapter: str, *, make_trainable: bool = True
) -> list[nn.Parameter]:
    """The LoRA parameters of ``adapter`` in a fixed order (sorted by global key).

    With ``make_trainable`` every other parameter of the model (base weights and the other
    adapters) gets ``requires_grad=False`` and these get ``True``: give the result to the
    optimizer and to :class:`lora.averaging.StageGradientAverager` (same order on every replica).
    """
    params = [param for _, param in _adapter_tensors(model, adapter)]
    if make_trainable:
        with adapter_lock(model):
            for param in model.parameters():
                param.requires_grad_(False)
            for param in params:
                param.requires_grad_(True)
    return params


def adapter_state_dict(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Copy of ``adapter``'s tensors under PEFT's saved-adapter key names (global indices)."""
    return {key: param.detach().clone() for key, param in _adapter_tensors(model, adapter)}


def _layer_of(key: str) -> int | None:
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> int:
    """Copy ``state`` into ``adapter``'s tensors; returns the number of tensors loaded.

    ``state`` may be this stage's dict or the whole model's (keys of layers outside the stage's
    range are ignored). Every tensor of this stage must be present with its exact shape, and no
    key inside the stage's range may be unknown — otherwise nothing is changed and
    :class:`CheckpointError` says what differs.
    """
    own = dict(_adapter_tensors(model, adapter))
    layers = {_layer_of(key) for key in own}
    relevant = {k: v for k, v in state.items() if _layer_of(k) in layers}
    missing = sorted(set(own) - set(relevant))
    unexpected = sorted(set(relevant) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"adapter {adapter!r} state does not match this model: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}",
            hint="were both made with the same LoraSettings and layer range?",
        )
    for key, param in own.items():
        if tuple(relevant[key].shape) != tuple(param.shape):
            raise CheckpointError(
                f"{key}: shape {list(relevant[key].shape)}, expected {list(param.shape)}"
            )
    with adapter_lock(model):
        for key, param in own.items():
            param.copy_(relevant[key].to(param.dtype))
    return len(own)
