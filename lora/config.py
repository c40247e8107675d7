"""Validated settings of LoRA adapters, of a stage's optimizer and of gradient averaging
between stage replicas.

All are pydantic models (frozen, unknown fields refused), and each is the one definition of its
defaults: the trainer's config (``training.config.TrainConfig``) and the stage's training job
(``pipeline_stages.training.JobSettings``) both use them, and they cross the wire as their JSON
(``TrainingJobRequest.lora_json`` / ``optimizer_json`` / ``averaging_json``).
``LoraSettings.fingerprint`` is the sha256 of everything that changes an adapter's tensors or
their meaning; replicas whose fingerprints differ refuse to average (see :mod:`lora.averaging`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from base.precision import DType
from provenance import sha256_json

LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
ADAPTER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(_Strict):
    """One LoRA adapter: ``W x + (alpha / rank) * B A x`` on every targeted linear layer."""

    rank: int = Field(8, gt=0, le=1024, description="rank r of A (r x in) and B (out x r)")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is alpha/rank * BA")
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch input (train mode only)"
    )
    target_modules: tuple[str, ...] = Field(
        LLAMA_ATTENTION + LLAMA_MLP,
        min_length=1,
        validate_default=True,
        description="names of the linear layers inside each decoder block that get an adapter "
        "(LLaMA: q/k/v/o_proj, gate/up/down_proj); embeddings and LM head never do",
    )
    init_seed: int = Field(
        0,
        ge=0,
        description="seed of the deterministic A initialisation; "
        "each A tensor is drawn from (seed, adapter name, global tensor name)",
    )

    @field_validator("target_modules")
    @classmethod
    def _known_modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(LLAMA_ATTENTION + LLAMA_MLP))
        if unknown:
            raise ValueError(
                f"unknown target modules {unknown}; choose from {list(LLAMA_ATTENTION + LLAMA_MLP)}"
            )
        if len(set(value)) != len(value):
            raise ValueError("target_modules has duplicates")
        return tuple(sorted(value))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def fingerprint(self) -> str:
        """sha256 of the settings (canonical JSON); equal settings give equal fingerprints."""
        return sha256_json(self.model_dump(mode="json"))

    def to_peft(self):
        """The equivalent ``peft.LoraConfig`` (no bias, no rsLoRA/DoRA, default init of B = 0)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    @classmethod
    def from_peft_config(cls, config: dict) -> LoraSettings:
        """The settings of a saved PEFT ``adapter_config.json`` (parsed); ``ValueError`` names
        what a plain LoRA adapter may not have (bias, DoRA, rsLoRA, a regex of targets)."""
        unsupported = [
            key
            for key, off in (("bias", "none"), ("use_dora", False), ("use_rslora", False))
            if config.get(key, off) != off
        ]
        targets = config.get("target_modules")
        if config.get("peft_type", "LORA") != "LORA" or unsupported or isinstance(targets, str):
            raise ValueError(f"not a plain LoRA adapter ({unsupported or targets})")
        try:
            return cls(
                rank=config["r"],
                alpha=config["lora_alpha"],
                dropout=config.get("lora_dropout", 0.0),
                target_modules=tuple(targets or ()),
            )
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]!r}: cannot map to LoraSettings") from exc


LossScaling = Literal["auto", "dynamic", "none"]


class OptimizerSettings(_Strict):
    """AdamW over a stage's trainable parameters, the clip of their gradient norm, and the
    precision contract of the job (``dtype``, ``loss_scaling``; docs/lora.md, mixed precision).

    The defaults are what ``node0 train`` uses when its config names no value.
    """

    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW (decoupled) weight decay")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW coefficients of the gradient's running averages"
    )
    eps: float = Field(1e-8, gt=0, description="AdamW term added to the denominator")
    max_grad_norm: float = Field(
        1.0,
        ge=0,
        description="clip the L2 norm of each stage's adapter gradient to this (0: off); "
        "per stage, not over the whole model (docs/training.md)",
    )
    dtype: DType | None = Field(
        None,
        description="the dtype every stage of the job computes in (its frozen base, and the "
        "activations and gradients it sends); a stage of another dtype refuses the job. None: "
        "each stage's own, as the route was planned. Adapters and optimizer state are float32 "
        "whatever this is",
    )
    loss_scaling: LossScaling = Field(
        "auto",
        description="dynamic: the loss is multiplied by the trainer's loss scale and the "
        "gradients divided by it before the step (float16 gradients underflow without it); "
        "none: neither (bfloat16 has float32's exponent range); auto: dynamic if a stage of "
        "the route computes in float16. A float16 stage refuses 'none'",
    )

    @model_validator(mode="after")
    def _float16_needs_scaling(self) -> OptimizerSettings:
        if self.dtype == "float16" and self.loss_scaling == "none":
            raise ValueError(
                "dtype float16 with loss_scaling none: float16 gradients underflow without "
                "loss scaling (use auto or dynamic, or bfloat16)"
            )
        return self

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError(f"betas must be in [0, 1), got {list(value)}")
        return value


class AveragingSettings(_Strict):
    """How replicas of one stage average adapter gradients through hivemind.

    One averaging round per optimizer step: every replica contributes its accumulated adapter
    gradient weighted by its sample count; all of them apply the same averaged gradient.
    With the defaults a replica whose partners are gone returns its local gradient after
    ``matchmaking_timeout`` (8 s) plus a DHT lookup; two replicas calling at about the same time
    with ``target_group_size=2`` start at once (no waiting for ``min_matchmaking_time``). A
    replica whose partner is alive but behind keeps looking for up to ``partner_wait`` seconds
    (:mod:`lora.replica_presence`), so trainers whose steps drift apart still average every
    step.
    """

    target_group_size: int = Field(
        2,
        ge=2,
        description="replicas expected per round; a round starts as soon as this many are matched",
    )
    min_group_size: int = Field(
        2,
        ge=2,
        description="fewest replicas that make a round; with "
        "fewer, the step uses the local gradient and says so",
    )
    min_matchmaking_time: float = Field(
        5.0,
        gt=0,
        description="seconds a group is gathered before a round starts when it does not fill up",
    )
    request_timeout: float = Field(
        3.0,
        gt=0,
        description="matchmaking request timeout (s); 1 s lost rounds under CPU load, 3 s held",
    )
    matchmaking_timeout: float = Field(
        8.0,
        gt=0,
        description="give up looking for a group "
        "after this many seconds and keep the local gradient: "
        "what a round costs a replica whose partners are gone; "
        "replicas that call up to about this much apart still "
        "meet",
    )
    partner_wait: float = Field(
        90.0,
        ge=0,
        description="seconds a replica that found no "
        "group keeps looking while a partner replica is still due at "
        "its step (alive, not yet past it, training); 0: never",
    )
    partner_idle_timeout: float = Field(
        20.0,
        gt=0,
        description="a live partner that has not "
        "been fed forward/backward calls for this long (its "
        "trainer stopped) is no longer waited for",
    )
    presence_heartbeat: float = Field(
        2.0,
        gt=0,
        description="seconds between a replica's "
        "presence records; a dead replica's record expires "
        "after three of them",
    )
    next_chunk_timeout: float = Field(
        5.0,
        gt=0,
        description="a sender silent this long is "
        "dropped from the round (reducers get twice as long)",
    )
    allreduce_timeout: float = Field(
        30.0, gt=0, description="upper bound of one all-reduce once the group is formed"
    )
    check_timeout: float = Field(
        6.0,
        gt=0,
        description="seconds to wait for every groupmate's checksum of the averaged tensors",
    )
    max_retries: int = Field(
        1, ge=0, description="reruns of a round that was partial or failed, among the survivors"
    )
    resync_timeout: float = Field(
        20.0,
        gt=0,
        description="seconds a replica whose state "
        "differs from its groupmates' has to download the source "
        "replica's state (the source waits as long for it)",
    )
    compression: Literal["none", "float16", "int8", "int4"] = Field(
        "none",
        description="wire format of gradient parts: none (float32), float16, int8 or int4 (the "
        "adapter gradients averaged as one flat tensor whose parts travel as blockwise absmax "
        "int8, 1.002 bytes a value, or int4, 0.508 bytes a value; parts under 1024 values as "
        "float16: lora/compression.py); see docs/wan.md for bytes and loss",
    )
    mode: Literal["per_step", "diloco"] = Field(
        "per_step",
        description="per_step: the replicas average their adapter gradients at every "
        "optimizer step; diloco: each replica takes local_steps optimizer steps alone, then "
        "the replicas average their pseudo-gradients (parameters at the last sync minus "
        "current ones) and apply them with outer Nesterov SGD (lora/diloco.py, docs/wan.md)",
    )
    local_steps: int = Field(
        1,
        ge=1,
        description="diloco: local optimizer steps between two averaging rounds (K)",
    )
    outer_lr: float = Field(0.7, gt=0, description="diloco: the outer SGD's learning rate")
    outer_momentum: float = Field(
        0.9, ge=0, lt=1, description="diloco: the outer SGD's Nesterov momentum"
    )
    max_part_norm: float | None = Field(
        None,
        gt=0,
        description="an incoming part whose L2 norm "
        "exceeds this is scaled down to it (None: no cap)",
    )
    outlier_norm_ratio: float | None = Field(
        10.0,
        gt=1,
        description="a groupmate's gradient part whose norm exceeds this many times the median "
        "of the group's is left out of the mean and its peer reported (needs 3 or more "
        "weighted copies; None: off; see lora/allreduce_guard.py)",
    )
    max_peer_weight: float = Field(
        1e6,
        gt=0,
        description="declared sample weights are "
        "clamped to [0, this]; a non-finite weight drops the sender",
    )
    part_size_bytes: int = Field(1 << 19, ge=1024, description="size of one all-reduce part")
    check_rtol: float | None = Field(
        None,
        gt=0,
        description="relative tolerance (to the L2 "
        "norm) when comparing checksums of averaged gradients "
        "(default: 1e-4, 5e-3 with float16, 3e-2 with int8)",
    )
    state_check_rtol: float | None = Field(
        None,
        gt=0,
        description="relative tolerance (to the "
        "L2 norm) when comparing replicas' adapter and "
        "optimizer states; above it they resync (default: "
        "1e-3, 2e-2 with float16, 5e-2 with int8 or int4)",
    )

    @model_validator(mode="after")
    def _consistent_timeouts(self) -> AveragingSettings:
        if self.min_group_size > self.target_group_size:
            raise ValueError("min_group_size must not exceed target_group_size")
        if self.min_matchmaking_time >= self.matchmaking_timeout:
            raise ValueError("min_matchmaking_time must be shorter than matchmaking_timeout")
        if self.request_timeout >= self.min_matchmaking_time:
            raise ValueError(
                "request_timeout must be shorter than min_matchmaking_time "
                "(hivemind breaks matchmaking deadlocks with it)"
            )
        return self

    def for_replicas(self, replicas: int) -> AveragingSettings:
        """These settings for a job of ``replicas`` replicas per stage (the group size it
        targets), validated again; raises ``ValueError`` if they contradict it."""
        return AveragingSettings.model_validate(
            {**self.model_dump(), "target_group_size": replicas}
        )

    @property
    def checksum_rtol(self) -> float:
        if self.check_rtol is not None:
            return self.check_rtol
        return {"float16": 5e-3, "int8": 3e-2, "int4": 3e-2}.get(self.compression, 1e-4)

    @property
    def state_checksum_rtol(self) -> float:
        if self.state_check_rtol is not None:
            return self.state_check_rtol
        return {"float16": 2e-2, "int8": 5e-2, "int4": 5e-2}.get(self.compression, 1e-3)


def check_adapter_name(name: str) -> str:
    """Adapter names are short lowercase slugs (``bead-creation``, ``code-review``)."""
    if not name or len(name) > 64 or set(name) - ADAPTER_NAME_CHARS or name[0] in "-_":
        raise ValueError(
            f"bad adapter name {name!r}: use 1-64 of [a-z0-9-_], starting with a letter or digit"
        )
    return name
