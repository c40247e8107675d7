"""``TrainConfig``: what ``node0 train --config FILE`` does. YAML files only name these values."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dataload.config import DataConfig
from lora.config import AveragingSettings, LoraSettings, OptimizerSettings, check_adapter_name
from training.schedule import DEFAULT_SCHEDULE, Schedule


class DPOSettings(BaseModel):
    """The DPO objective (``data.kind: dpo``), as TRL's ``DPOTrainer`` defines it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.1, gt=0, allow_inf_nan=False)
    """β: how far the policy may move from the reference (TRL's default 0.1)."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    """ε of conservative DPO: the share of pairs assumed mislabelled (0: plain sigmoid DPO)."""
    reference_adapter: str | None = None
    """The reference: None = the base with every adapter off (PEFT's ``disable_adapter``), or
    the name of an adapter on every stage (e.g. the SFT adapter the run started from)."""
    cache_reference: bool = True
    """Compute each pair's reference log-probs once and keep them in the run directory
    (``reference_logprobs.json``); False: recompute them every step."""

    @model_validator(mode="after")
    def _check(self) -> DPOSettings:
        if self.reference_adapter is not None:
            check_adapter_name(self.reference_adapter)
        return self


class TrainConfig(OptimizerSettings):
    """One trainer of a LoRA fine-tuning run over the swarm.

    The optimizer fields (``learning_rate``, ``weight_decay``, ``betas``, ``eps``,
    ``max_grad_norm``) and their defaults are :class:`lora.config.OptimizerSettings`'s, the
    model the stages build their optimizer from, inherited so that a YAML file names them at
    its top level; :attr:`optimizer` is that part, as sent to the stages. So are ``dtype``
    (the stage dtype the run trains on, one of :data:`base.precision.DTYPES`; None: the route's)
    and ``loss_scaling`` (``auto``: dynamic when a stage of the route computes in float16).
    The trainer itself computes nothing in a dtype: the last stage holds the LM head and the
    loss, so there is no trainer-side ``device``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "smollm2-135m"
    """The base model (catalog name or local HF directory); stages of another model refuse."""
    initial_peers: list[str] = Field(default_factory=list)
    """DHT multiaddrs to join; empty: the local swarm's state file (``node0 swarm up``)."""
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Names the job on every stage (checkpoints, averaging group). Trainers that share a run
    (data shards) use the same ``run_id``; default: a fresh one per run."""
    adapter: str = "gastown"
    """The LoRA adapter trained on every stage (a slug); inference requests it by name."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    init_from: str | None = Field(None, min_length=1)
    """Start :attr:`adapter` from this adapter's weights instead of LoRA's zero-B init: a PEFT
    adapter directory (``node0 gather --adapters-only``) or a registry version
    (``deacon-v2``), checked against the model and :attr:`lora` before anything is sent
    (:mod:`training.init_adapter`). E.g. DPO from the SFT adapter, with
    ``dpo.reference_adapter`` naming the same SFT adapter; None: a fresh adapter."""
    steps: int = Field(20, ge=1)
    """Optimizer steps in total (a resumed run continues to this number)."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Rows per forward/backward; a batch is split into micro-batches whose gradients
    accumulate into one step (None: the whole batch at once). Several micro-batches per step
    let the stages work at the same time (:attr:`schedule`); at most ``data.batch_size``."""
    schedule: Schedule = DEFAULT_SCHEDULE
    """How a step's micro-batches flow through the stages (``training.schedule``): ``1f1b``
    (after a warm-up each stage alternates one forward and one backward; a stage holds at most
    as many micro-batches as stages from it to the end), ``gpipe`` (all forwards, then all
    backwards; every stage holds all micro-batches of the step, at most 64) or
    ``sequential`` (one micro-batch through every stage and back before the next: one
    stage works at a time). The gradients are the same under each."""
    replicas: int = Field(1, ge=1)
    """Replicas of each stage that average their gradients every step (one per trainer);
    ``averaging.mode: diloco``: every ``averaging.local_steps`` steps, their pseudo-gradients."""
    averaging: AveragingSettings = Field(default_factory=AveragingSettings)
    """How the replicas of a stage average (timeouts, compression), validated here before
    anything is sent; ``target_group_size`` is set by ``replicas``."""
    checkpoint_every: int = Field(10, ge=0)
    """Stages save adapter + optimizer, and the trainer its data position, every N steps
    (0: only at the end)."""
    eval_every: int = Field(0, ge=0)
    """Held-out loss every N steps (0: before and after training only)."""
    probes: Path | None = None
    """Probe prompts (``dataload.probes``) answered before and after training."""
    probe_max_new_tokens: int = Field(40, ge=1)
    reroute_timeout: float = Field(120.0, gt=0)
    """How long a trainer whose route broke waits for a usable replica (state: degraded)."""
    step_timeout: float = Field(600.0, gt=0)
    """Deadline of one RPC to a stage (an optimizer step may wait for averaging)."""
    initial_loss_scale: float = Field(2.0**16, gt=0, allow_inf_nan=False)
    """With dynamic loss scaling: the first loss scale (``torch.amp.GradScaler``'s default);
    an overflow halves it (the step is skipped on every stage)."""
    loss_scale_growth_interval: int = Field(2000, ge=1)
    """With dynamic loss scaling: steps in a row without an overflow after which the loss
    scale doubles."""
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    """The DPO objective, used when ``data.kind`` is ``dpo`` (batch and micro-batch sizes then
    count pairs: a pair is two rows)."""
    data: DataConfig

    @property
    def optimizer(self) -> OptimizerSettings:
        """The optimizer settings every stage of the route builds its AdamW from."""
        return OptimizerSettings.model_validate(
            self.model_dump(include=set(OptimizerSettings.model_fields))
        )

    @model_validator(mode="before")
    @classmethod
    def _group_size_from_replicas(cls, data):
        """Averaging groups are as large as ``replicas``: say so before ``averaging`` validates
        (its ``min_group_size`` may then be up to ``replicas``)."""
        if isinstance(data, dict) and isinstance(data.get("averaging"), dict):
            replicas = data.get("replicas", 1)
            if isinstance(replicas, int) and replicas > 1:
                data = {**data, "averaging": {"target_group_size": replicas, **data["averaging"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        check_adapter_name(self.adapter)
        if self.replicas > 1 and self.averaging.target_group_size != self.replicas:
            raise ValueError(
                f"averaging.target_group_size {self.averaging.target_group_size} contradicts "
                f"replicas {self.replicas}: groups are as large as replicas (leave it out)"
            )
        if self.averaging.mode == "diloco" and self.replicas < 2:
            raise ValueError(
                f"averaging.mode diloco with replicas {self.replicas}: DiLoCo averages "
                "pseudo-gradients between replicas of each stage (set replicas >= 2, or leave "
                "the mode out)"
            )
        if self.data.kind == "dpo" and self.dpo.reference_adapter == self.adapter:
            raise ValueError(
                f"dpo.reference_adapter {self.adapter!r} is the adapter being trained; the "
                "reference must stay fixed (leave it out for the base with adapters off)"
            )
        if self.micro_batch_size is not None and self.micro_batch_size > self.data.batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} is larger than data.batch_size "
                f"{self.data.batch_size}: a micro-batch is part of a step's batch (leave it "
                "out for the whole batch at once)"
            )
        if self.data.packing:
            raise ValueError(
                "packing is not supported over the pipeline yet: packed rows need "
                "per-example position ids and a block mask on the wire"
            )
        return self
