"""Per-stage LoRA adapters, the optimizer-step guard, replica gradient averaging, checkpoints."""

from lora.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from lora.config import AveragingSettings, LoraSettings, OptimizerSettings
from lora.peft_export import merge_stage_states, save_peft_adapter
from lora.stage_adapters import (
    active_adapters,
    adapter_lock,
    adapter_parameters,
    adapter_state_dict,
    adapters,
    attach_adapter,
    deterministic_init_,
    load_adapter_state_dict,
    set_active_adapters,
    use_adapters,
)
from lora.step_guard import StepGuard, StepOutcome, global_grad_norm

__all__ = [
    "AveragingSettings",
    "LoadedCheckpoint",
    "LoraSettings",
    "OptimizerSettings",
    "StepGuard",
    "StepOutcome",
    "active_adapters",
    "adapter_lock",
    "adapter_parameters",
    "adapter_state_dict",
    "adapters",
    "attach_adapter",
    "deterministic_init_",
    "global_grad_norm",
    "load_adapter_state_dict",
    "load_checkpoint",
    "merge_stage_states",
    "save_checkpoint",
    "save_peft_adapter",
    "set_active_adapters",
    "use_adapters",
]
# lora.averaging (StageGradientAverager, averaging_prefix, AveragingReport) imports hivemind;
# import it from its module so stage-only users do not pay for it.
