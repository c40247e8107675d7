"""Training on one stage: forward that keeps what backward needs, backward, optimizer step.

A job (``job_id`` + stage span) owns the optimizer over the stage's trainable parameters: the
whole stage (``trainable="all"``) or one named LoRA adapter (``"adapter:<name>"``, attached to
the stage itself so inference sessions and gathers see it as it trains). A forward runs the
micro-batch in pieces (:mod:`pipeline_stages.piecewise`: one compute-gate turn per decoder block
or LM-head chunk, so inference sessions wait for one piece at most) and keeps them under its
micro-batch id; the backward pops them, runs them backwards piece by piece from the gradient of
the output (or, on the last stage, of the scaled loss) and returns the gradient of its input.
Parameter gradients accumulate across micro-batches until the trainer asks for an optimizer
step. The step first averages the
gradients with the other replicas of the stage (hivemind, when the job expects replicas), then
goes through :class:`lora.StepGuard`: a step whose gradients are not finite is skipped and
counted, never fatal. Adapter jobs checkpoint atomically and resume from their checkpoint or,
when a replica is ahead, from its peers.

DiLoCo (``averaging: {mode: diloco, local_steps: K}``, :mod:`lora.diloco`): the replicas do
not average at every step; each takes K local AdamW steps, then (on the K-th step, after the
inner step) averages its pseudo-gradient through the same averaging round and applies the mean
with outer Nesterov SGD. The state the replicas compare and share is the outer one (synced
parameters and outer momentum); the checkpoint keeps it under ``extra["diloco"]``.

Mixed precision (docs/lora.md): the frozen base computes in the stage's dtype, adapters and
their optimizer state stay float32 (PEFT's ``autocast_adapter_dtype``), the loss is computed in
float32 from the logits, and activations and their gradients cross the wire in the dtype they
were computed in. With dynamic loss scaling (float16) every micro-batch carries the trainer's
loss scale (``grad_scale``): the last stage multiplies its loss by it, and the parameter
gradients are divided by it before the step. A job whose precision contradicts the stage (another
dtype, float16 without loss scaling, full fine-tuning of a half-precision base) is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from base.precision import DTYPES, accepted_inputs, dtype_name
from dataload.losses import counted_tokens
from lora.averaging import (
    AveragingConfigError,
    AveragingReport,
    StageGradientAverager,
    averaging_prefix,
)
from lora.checkpoint import load_checkpoint, save_checkpoint
from lora.config import AveragingSettings, LoraSettings, OptimizerSettings, check_adapter_name
from lora.diloco import DiLoCoOuter
from lora.stage_adapters import (
    adapter_parameters,
    adapter_state_dict,
    adapters,
    attach_adapter,
    load_adapter_state_dict,
    use_adapters,
)
from lora.step_guard import StepGuard, StepOutcome, global_grad_norm
from models.stage_module import DecoderStage
from pipeline_stages.compute_thread import run_here
from pipeline_stages.errors import (
    AdapterConflict,
    BadJobSettings,
    DTypeMismatch,
    InvalidInput,
    LeaseBusy,
    MicrobatchNotFound,
    NoAveraging,
    NothingToStep,
    ReplicaConfigMismatch,
    TooManyPending,
)
from pipeline_stages.piecewise import MicrobatchPieces, Turn, backward_pieces, forward_pieces

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0
"""A job answers only its trainer until that trainer has been silent this long."""


@dataclass(frozen=True)
class JobSettings:
    """What a training job on a stage was opened with (``OpenTrainingJob``)."""

    trainable: str = "all"
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    lora: LoraSettings | None = None
    replicas: int = 1
    averaging: AveragingSettings = field(default_factory=AveragingSettings)
    checkpoint_every: int = 0

    @property
    def adapter(self) -> str | None:
        """The adapter being trained, or None for full fine-tuning."""
        if self.trainable == "all":
            return None
        if self.trainable.startswith("adapter:"):
            return self.trainable.split(":", 1)[1]
        raise BadJobSettings(f"trainable={self.trainable!r}: expected 'all' or 'adapter:<name>'")


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step did on this stage."""

    outcome: StepOutcome
    averaging: AveragingReport | None
    checkpoint: Path | None
    diloco: str = ""  # DiLoCo mode: "local step k/K" or "outer step" ("" otherwise)


def _base_dtype(stage: DecoderStage) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the stage's own weights (not of its float32 adapters)."""
    for name, param in stage.named_parameters():
        if "lora_" not in name:
            return param.dtype, param.device
    raise ValueError("a stage without weights")


def _dynamic_scaling(settings: JobSettings, stage_dtype: str) -> bool:
    """Whether the job scales its loss, after refusing what contradicts the stage's dtype."""
    optimizer = settings.optimizer
    if optimizer.dtype is not None and optimizer.dtype != stage_dtype:
        raise DTypeMismatch(
            f"the job trains on a {optimizer.dtype} base; this stage computes in {stage_dtype}"
        )
    if stage_dtype == "float16" and optimizer.loss_scaling == "none":
        raise BadJobSettings(
            "this stage computes in float16, whose gradients underflow without loss scaling; "
            "the job asks for loss_scaling none (use auto or dynamic)"
        )
    if settings.trainable == "all" and stage_dtype != "float32":
        raise BadJobSettings(
            f"full fine-tuning of a {stage_dtype} stage would keep the weights and their "
            "optimizer state in that dtype; train an adapter (float32) or host it in float32"
        )
    if optimizer.loss_scaling == "auto":
        return stage_dtype == "float16"
    return optimizer.loss_scaling == "dynamic"


def _prepare_adapter(stage: DecoderStage, name: str, lora: LoraSettings | None) -> None:
    try:
        check_adapter_name(name)
    except ValueError as exc:
        raise BadJobSettings(str(exc)) from exc
    attached = adapters(stage).get(name)
    if lora is None:
        if attached is None:
            raise BadJobSettings(
                f"adapter {name!r} is not on this stage and the job gave no LoRA "
                "settings to create it"
            )
        return
    if attached is None:
        attach_adapter(stage, name, lora)
    elif attached.fingerprint() != lora.fingerprint():
        raise AdapterConflict(
            f"adapter {name!r} on this stage has other LoRA settings "
            f"({attached.model_dump(mode='json')}) than the job asks for "
            f"({lora.model_dump(mode='json')}); use another adapter name or the same settings"
        )


class StageTrainingJob:
    def __init__(
        self,
        stage: DecoderStage,
        settings: JobSettings,
        *,
        job_id: str = "job",
        model: str = "model",
        dht=None,
        checkpoint_dir: Path | None = None,
        max_pending: int = 64,
        accept_input_dtypes: tuple[str, ...] = (),
        piece_tokens: int = 512,
    ):
        self.stage = stage
        self.settings = settings
        self.job_id = job_id
        self.max_pending = max_pending
        self.adapter = settings.adapter
        self.dtype, self.device = _base_dtype(stage)
        self.scaled = _dynamic_scaling(settings, dtype_name(self.dtype))
        self.accepts = accepted_inputs(dtype_name(self.dtype), accept_input_dtypes)
        self.grad_scale: float | None = None  # the loss scale of the step being accumulated
        self.lock = threading.RLock()  # parameters and optimizer state (not the all-reduce)
        self.owner = ""
        self.last_seen = 0.0
        if self.adapter is None:
            self.params = list(stage.parameters())
            for param in stage.parameters():
                param.requires_grad_(False)
            for param in self.params:
                param.requires_grad_(True)
        else:
            _prepare_adapter(stage, self.adapter, settings.lora)
            self.params = adapter_parameters(stage, self.adapter)
        optimizer = settings.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=optimizer.learning_rate,
            weight_decay=optimizer.weight_decay,
            betas=optimizer.betas,
            eps=optimizer.eps,
        )
        self.guard = StepGuard(self.params, max_grad_norm=optimizer.max_grad_norm)
        self.diloco: DiLoCoOuter | None = None
        if settings.averaging.mode == "diloco":
            if self.adapter is None or settings.replicas < 2:
                raise BadJobSettings(
                    "averaging mode diloco averages an adapter between replicas: it needs "
                    f"an adapter job with replicas > 1 (trainable={settings.trainable!r}, "
                    f"replicas={settings.replicas})"
                )
            self.diloco = DiLoCoOuter.from_settings(self.params, settings.averaging)
        # the optimizer whose state the replicas compare and share: AdamW's when they average
        # every step, the outer SGD's (momentum) under DiLoCo, whose AdamW state stays local
        self.shared_optimizer = (
            self.diloco.outer_optimizer if self.diloco is not None else self.optimizer
        )
        self.pending: dict[str, MicrobatchPieces] = {}
        self.piece_tokens = piece_tokens
        self._backward_lock = threading.Lock()
        self.accumulated = 0  # backward passes since the last step
        self.checkpoint_path = None
        self.resumed_from = ""
        if self.adapter is not None and checkpoint_dir is not None:
            self.checkpoint_path = (
                Path(checkpoint_dir) / job_id / f"{self.adapter}-L{stage.start}-{stage.end}.pt"
            )
            if self.checkpoint_path.is_file():
                loaded = load_checkpoint(
                    self.checkpoint_path,
                    stage,
                    self.adapter,
                    layers=(stage.start, stage.end),
                    optimizer=self.optimizer,
                    guard=self.guard,
                )
                self.resumed_from = "checkpoint"
                if self.diloco is not None:
                    saved = loaded.extra.get("diloco")
                    if saved is None:  # a per-step checkpoint: its adapter is the outer state
                        self.diloco.inner_steps = self.guard.applied
                    else:
                        try:
                            self.diloco.load_state_dict(saved)
                        except ValueError as exc:
                            raise BadJobSettings(
                                f"checkpoint {self.checkpoint_path}: DiLoCo state: {exc}"
                            ) from exc
                log.info(
                    "job %s resumed %s at step %d from %s",
                    job_id,
                    self.adapter,
                    loaded.step,
                    self.checkpoint_path,
                )
        self.averager = None
        if self.adapter is not None and settings.replicas > 1:
            if dht is None:
                raise NoAveraging("this daemon has no DHT to average with replicas")
            try:
                averaging = settings.averaging.for_replicas(settings.replicas)
            except ValueError as exc:
                raise BadJobSettings(
                    f"averaging settings for {settings.replicas} replicas: {exc}"
                ) from exc
            try:
                self.averager = StageGradientAverager(
                    dht,
                    prefix=averaging_prefix(model, stage.start, stage.end, job_id, self.adapter),
                    params=self.params,
                    settings=averaging,
                    lora=settings.lora,
                    optimizer=self.shared_optimizer,
                    lock=self.lock,
                    # DiLoCo: replicas compare and share the outer (last synced) parameters
                    state_params=self.diloco.outer_params if self.diloco is not None else None,
                )
            except AveragingConfigError as exc:
                raise ReplicaConfigMismatch(str(exc)) from exc
            self.averager.set_step(self.guard.applied)

    # -- lease ---------------------------------------------------------------------------
    def claim(self, trainer_id: str) -> None:
        """Bind the job to ``trainer_id``; another trainer is refused while the lease holds."""
        now = time.monotonic()
        if (
            trainer_id
            and self.owner
            and trainer_id != self.owner
            and now - self.last_seen < LEASE_SECONDS
        ):
            raise LeaseBusy(
                f"this replica of layers [{self.stage.start}, {self.stage.end}) is training job "
                f"{self.job_id!r} for trainer {self.owner[:12]}; use another replica"
            )
        if trainer_id and trainer_id != self.owner:
            self.owner = trainer_id
            self.pending.clear()
            self.discard()
        self.last_seen = now

    # -- peers ---------------------------------------------------------------------------
    def sync_from_peers(self, timeout: float = 15.0) -> bool:
        """Take the adapter state of a replica that is further along; False if none is."""
        if self.averager is None:
            return False
        with self.lock:
            saved = (
                adapter_state_dict(self.stage, self.adapter),
                self.shared_optimizer.state_dict(),
                self.guard.state_dict(),
            )
        own_step = self.guard.applied
        try:
            loaded = self.averager.load_state_from_peers(timeout=timeout)
        except Exception as exc:  # a peer's bad state must not take this replica down
            log.warning("could not load state from peers: %s", exc)
            loaded = None
        if loaded is None:
            return False
        if loaded.step <= own_step:  # we were as far along: keep ours
            with self.lock:
                load_adapter_state_dict(self.stage, self.adapter, saved[0])
                self.shared_optimizer.load_state_dict(saved[1])
            self.averager.set_step(own_step)
            return False
        with self.lock:
            self.guard.applied = loaded.step
            if self.diloco is not None:
                # the peer shared its outer parameters and momentum (its local steps since the
                # last round stay its own): they are ours, and we start our local steps there
                self.diloco.reset()
                self.diloco.inner_steps = loaded.step
        self.resumed_from = "peers"
        log.info(
            "job %s: loaded %s at step %d from a replica (was at %d)",
            self.job_id,
            self.adapter,
            loaded.step,
            own_step,
        )
        return True

    # -- micro-batches -------------------------------------------------------------------
    def _leaf(self, inputs: torch.Tensor | None) -> torch.Tensor:
        stage = self.stage
        if inputs is None:
            raise InvalidInput("Forward needs an 'input' tensor")
        if stage.is_first:
            if inputs.dtype != torch.int64 or inputs.dim() != 2:
                raise InvalidInput("first stage takes int64 token ids (batch, seq)")
            vocab = stage.full_config.vocab_size
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= vocab):
                raise InvalidInput(f"token ids must be in [0, {vocab})")
            return inputs.to(self.device)
        hidden = stage.full_config.hidden_size
        if not inputs.is_floating_point() or inputs.dim() != 3 or inputs.shape[2] != hidden:
            raise InvalidInput(f"stage takes float hidden states (batch, seq, {hidden})")
        sent = dtype_name(inputs.dtype) if inputs.dtype in DTYPES.values() else str(inputs.dtype)
        if sent not in self.accepts:
            raise DTypeMismatch(
                f"stage [{stage.start}, {stage.end}) computes in {dtype_name(self.dtype)} and "
                f"takes activations in {', '.join(self.accepts)}, not {sent}"
            )
        # the leaf keeps the dtype it arrived in, so its gradient goes back in the sender's dtype
        return inputs.requires_grad_(True)

    @contextmanager
    def _state(self, train: bool, active: list[str] | None = None) -> Iterator[None]:
        """The stage as this job computes it: its adapter alone (or the base), train mode;
        ``active``: exactly these adapters instead (``[]``: the base, a DPO reference)."""
        stage = self.stage
        was_training = stage.training
        stage.train(train)
        if active is None and self.adapter is not None:
            active = [self.adapter]
        try:
            if active is None:
                yield
            else:
                with use_adapters(stage, active):
                    yield
        finally:
            stage.train(was_training)

    def _locked(self, fn, *args):
        with self.lock:
            return fn(*args)

    def _turns(self, compute_turn: Turn, train: bool, active: list[str] | None = None) -> Turn:
        """One piece's turn: the caller's compute turn, then the job's view of the stage."""

        def in_state(piece):
            with self._state(train, active):
                return piece()

        return lambda piece: compute_turn(lambda: in_state(piece))

    def _reference_set(self, reference: bool, reference_adapter: str) -> list[str] | None:
        """The adapter set of a DPO reference forward (None: the job's own view)."""
        if not reference:
            if reference_adapter:
                raise InvalidInput("'reference_adapter' is for reference forwards only")
            return None
        if not reference_adapter:
            return []  # the base with every adapter off (PEFT's disable_adapter)
        if reference_adapter == self.adapter:
            raise InvalidInput(
                f"the reference adapter cannot be {reference_adapter!r}, the adapter being trained"
            )
        if reference_adapter not in adapters(self.stage):
            raise InvalidInput(
                f"reference adapter {reference_adapter!r} is not on stage "
                f"[{self.stage.start}, {self.stage.end})"
            )
        return [reference_adapter]

    def _convert(self, leaf: torch.Tensor) -> torch.Tensor:
        if self.stage.is_first:
            return leaf
        return leaf.to(device=self.device, dtype=self.dtype)

    def _take_grad_scale(self, tensor: torch.Tensor | None) -> float:
        """The step's loss scale from a micro-batch (1 without loss scaling); one per step."""
        if not self.scaled:
            if tensor is not None:
                raise InvalidInput("'grad_scale' sent to a job without loss scaling")
            return 1.0
        if tensor is None:
            raise InvalidInput("dynamic loss scaling: every forward needs a 'grad_scale'")
        if tensor.dtype != torch.float32 or tuple(tensor.shape) != (1,):
            raise InvalidInput("'grad_scale' is one float32 value, shape (1,)")
        scale = float(tensor[0])
        if not (scale > 0 and torch.isfinite(tensor).all()):
            raise InvalidInput(f"'grad_scale' must be positive and finite, got {scale}")
        if self.grad_scale is not None and scale != self.grad_scale:
            raise InvalidInput(
                f"grad_scale {scale:g} differs from {self.grad_scale:g} of this step's "
                "earlier micro-batches: one loss scale per step"
            )
        self.grad_scale = scale
        return scale

    def forward(
        self,
        microbatch_id: str,
        tensors: dict[str, torch.Tensor],
        loss_scale: float,
        *,
        evaluate: bool = False,
        sequence_logprobs: bool = False,
        reference: bool = False,
        reference_adapter: str = "",
        compute_turn: Turn = run_here,
    ) -> dict:
        """Forward one micro-batch in pieces, each in a ``compute_turn(piece)`` (the gate's).

        ``sequence_logprobs`` (DPO): the last stage returns ``output``, each row's summed
        log-probability of its labelled tokens ``(batch,)`` float32, and its backward takes
        their gradient.
        ``reference`` (with ``evaluate``): computed with every adapter off, or with
        ``reference_adapter`` alone: the DPO reference from the same weights.
        """
        if self.averager is not None:
            self.averager.note_activity()
        leaf = self._leaf(tensors.get("input"))
        mask = tensors.get("attention_mask")
        if mask is not None and tuple(mask.shape) != tuple(leaf.shape[:2]):
            raise InvalidInput("attention_mask must be (batch, seq)")
        labels = tensors.get("labels")
        if self.stage.is_last and (labels is None or tuple(labels.shape) != tuple(leaf.shape[:2])):
            raise InvalidInput("last stage needs 'labels' of shape (batch, seq)")
        if labels is not None:
            labels = labels.to(self.device)
        if reference and not evaluate:
            raise InvalidInput("a reference forward is an evaluate forward (no gradient)")
        active = self._reference_set(reference, reference_adapter)
        pieces = {
            "mask": None if mask is None else mask.to(self.device),
            "convert": self._convert,
            "targets_from": labels,
            "piece_tokens": self.piece_tokens,
            "sequence": sequence_logprobs,
        }
        if evaluate:
            with torch.no_grad():
                _, out = forward_pieces(
                    self.stage,
                    leaf.detach(),
                    turn=self._turns(compute_turn, False, active),
                    **pieces,
                )
            if not self.stage.is_last or sequence_logprobs:
                return {"output": out.cpu()}
            return {"loss_sum": float(out), "loss_tokens": counted_tokens(labels)}
        if len(self.pending) >= self.max_pending:
            raise TooManyPending(
                f"{self.max_pending} micro-batches await backward; run backward or start a new job"
            )
        grad_scale = self._take_grad_scale(tensors.get("grad_scale"))
        scale = loss_scale * grad_scale if self.scaled else loss_scale
        with torch.enable_grad():
            chain, out = forward_pieces(
                self.stage,
                leaf,
                turn=self._turns(compute_turn, True),
                loss_scale=scale,
                **pieces,
            )
        self.pending[microbatch_id] = chain
        if not self.stage.is_last or sequence_logprobs:
            return {"output": out.detach().cpu()}  # in the stage's dtype (log-probs: float32)
        # the canonical loss, in float32 from the logits (summed per chunk of positions)
        return {"loss_sum": float(out), "loss_tokens": counted_tokens(labels)}

    def backward(
        self, microbatch_id: str, grad: torch.Tensor | None, *, compute_turn: Turn = run_here
    ) -> torch.Tensor | None:
        """Backward of a pending micro-batch, piece by piece; the gradient of its input."""
        if self.averager is not None:
            self.averager.note_activity()
        chain = self.pending.pop(microbatch_id, None)
        if chain is None:
            raise MicrobatchNotFound(f"no pending forward for micro-batch {microbatch_id!r}")
        if not self.stage.is_last or chain.output_shape:  # last: the sequence log-probs' grad
            shape = chain.output_shape
            if grad is None or tuple(grad.shape) != shape:
                raise InvalidInput(f"backward needs 'grad' of shape {list(shape)}")
            if not grad.is_floating_point():
                raise InvalidInput(f"'grad' must be a float tensor, got {grad.dtype}")
        # one backward at a time per job: each parameter's gradient sums the micro-batches in
        # the order their backward calls arrived (their pieces still interleave with inference)
        with self._backward_lock:
            sent = backward_pieces(chain, grad, turn=self._turns(compute_turn, True))
            self.accumulated += 1
        if self.stage.is_first:
            return None
        if self.scaled and not torch.isfinite(global_grad_norm(self.params)):
            # an overflow here must reach the first stage, which decides the step for all
            sent = torch.full_like(sent, float("nan"))
        return sent

    # -- steps ---------------------------------------------------------------------------
    def discard(self) -> None:
        """Drop the gradient accumulated since the last step (a step the trainer abandons)."""
        self.pending.clear()
        for param in self.params:
            param.grad = None
        self.accumulated = 0
        self.grad_scale = None
        if self.averager is not None:
            self.averager.note_idle()

    def _unscale(self) -> None:
        """Divide the accumulated gradients by the step's loss scale (exact for a power of two)."""
        scale, self.grad_scale = self.grad_scale, None
        if scale is None or scale == 1.0:
            return
        with self.lock:
            for param in self.params:
                if param.grad is not None:
                    param.grad.mul_(1.0 / scale)

    def optimizer_step(
        self,
        samples: float = 1.0,
        *,
        checkpoint: bool = False,
        compute_turn: Turn = run_here,
        trainer_step: int | None = None,
    ) -> StepReport:
        """Average with the replicas (outside every lock), then guard + step, then save.

        ``compute_turn(update)`` (the executor's compute gate, as a training turn) runs each
        parameter update only, so inference keeps running while this replica waits for its
        averaging group.
        """
        if self.accumulated == 0:
            raise NothingToStep(
                "no gradient accumulated since the last step; run forward and backward first"
            )
        self._unscale()  # replicas average true gradients, whatever their trainers' scales
        if self.diloco is not None:
            return self._diloco_step(samples, checkpoint, compute_turn, trainer_step)
        report = None
        if self.averager is not None:
            try:
                report = self.averager.average(samples)
            except AveragingConfigError as exc:
                raise ReplicaConfigMismatch(str(exc)) from exc
            if report.resynced:  # the round replaced our state with the source replica's
                with self.lock:
                    self.guard.applied = self.averager.step
        outcome = compute_turn(lambda: self._locked(self.guard.step, self.optimizer))
        self.accumulated = 0
        if self.averager is not None:
            self.averager.set_step(self.guard.applied)
        return StepReport(outcome, report, self._maybe_save(outcome, checkpoint))

    def _maybe_save(self, outcome: StepOutcome, checkpoint: bool) -> Path | None:
        every = self.settings.checkpoint_every
        due = checkpoint or (every > 0 and outcome.applied and self.guard.applied % every == 0)
        return self.save() if due else None

    def _diloco_step(
        self, samples: float, checkpoint: bool, compute_turn: Turn, trainer_step: int | None
    ) -> StepReport:
        """DiLoCo: the local AdamW step; on every K-th, then the averaged outer step.

        The rounds fall on the trainer's steps K, 2K, … (``trainer_step``: the steps it finished
        before this one), so replicas whose trainers are at the same step average together
        whatever each replica saw before (a late join, a skipped step); without it, this job's
        own count of optimizer steps (applied or skipped)."""
        diloco = self.diloco
        if trainer_step is not None:
            diloco.inner_steps = int(trainer_step)
        outcome = compute_turn(lambda: self._locked(self.guard.step, self.optimizer))
        self.accumulated = 0
        report, note = None, f"local step {diloco.local_step + 1}/{diloco.local_steps}"
        if diloco.note_inner_step():
            # pseudo-gradients in .grad, parameters at the outer ones
            compute_turn(lambda: self._locked(diloco.begin_round))
            try:
                # outside every lock; with the partners at this outer step (lora.averaging)
                report = self.averager.average(samples, rounds=diloco.outer_steps - 1)
            except AveragingConfigError as exc:
                with self.lock:
                    for param in self.params:
                        param.grad = None
                raise ReplicaConfigMismatch(str(exc)) from exc

            def finish_round() -> None:
                if report.resynced:  # the round loaded the source replica's outer state
                    self.guard.applied = self.averager.step
                diloco.finish_round()

            compute_turn(lambda: self._locked(finish_round))
            note = "outer step"
        # partners match rounds on the trainer's outer steps passed (lora.averaging)
        self.averager.set_step(self.guard.applied, rounds=diloco.outer_steps)
        return StepReport(outcome, report, self._maybe_save(outcome, checkpoint), note)

    def save(self) -> Path | None:
        """Write the adapter checkpoint (atomic); None for full fine-tuning jobs."""
        if self.checkpoint_path is None:
            return None
        with self.lock:
            return save_checkpoint(
                self.checkpoint_path,
                self.stage,
                self.adapter,
                step=self.guard.applied,
                layers=(self.stage.start, self.stage.end),
                optimizer=self.optimizer,
                guard=self.guard,
                extra={
                    "job_id": self.job_id,
                    **({"diloco": self.diloco.state_dict()} if self.diloco is not None else {}),
                },
            )

    def close(self) -> None:
        """Save (adapter jobs) and leave the averaging group."""
        try:
            if self.checkpoint_path is not None and self.guard.applied > 0:
                self.save()
        finally:
            if self.averager is not None:
                self.averager.shutdown()
