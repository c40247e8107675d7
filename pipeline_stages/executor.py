"""Run inference steps and training calls for the stages a daemon hosts.

One step extends a session's KV-cache with the new positions and returns the stage output. A
step may also rewind: a ``position`` below the cache length first crops the cache to it (the
client does this when a conversation's re-tokenized history diverges from what is cached).
Steps are validated on the caller's thread, then computed by the step scheduler
(:mod:`pipeline_stages.scheduler`) batched with every other session's pending step, each session
with its own cache and its own adapter set (:mod:`lora.mixed_batch`). Inference batches and
training pieces take turns through the compute gate (:mod:`pipeline_stages.compute_gate`), all
on the scheduler's thread, the daemon's one compute thread
(:mod:`pipeline_stages.compute_thread`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from base.errors import DeviceError
from base.precision import DTYPES, accepted_inputs, dtype_name
from base.sampler import SamplingParams, sample_token
from lora.mixed_batch import batch_adapters
from lora.stage_adapters import adapters as stage_adapters
from models.compiled_decode import CompiledDecode
from models.ragged_batch import RaggedBatch, Segment
from models.stage_module import DecoderStage
from pipeline_stages.compute_gate import ComputeGate
from pipeline_stages.errors import (
    ContextOverflow,
    DTypeMismatch,
    InvalidInput,
    JobNotFound,
    JobSettingsConflict,
    PositionAhead,
    PromptTooLong,
    SessionNotFound,
    SpanNotHosted,
    UnknownAdapter,
    WrongModel,
)
from pipeline_stages.scheduler import PendingStep, Share, StepScheduler
from pipeline_stages.sessions import Session, SessionManager
from pipeline_stages.training import JobSettings, StageTrainingJob, StepReport

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    output: torch.Tensor | None  # hidden states (1, n, hidden) on non-last stages
    token: int | None  # sampled next token (last stage)
    logits: torch.Tensor | None  # (vocab,) of the last position (last stage, on request)
    cache_length: int


class StageExecutor:
    """The stages of one daemon plus their sessions."""

    def __init__(
        self,
        model_name: str,
        stages: dict[tuple[int, int], DecoderStage],
        sessions: SessionManager,
        *,
        max_batch_tokens: int = 256,
        prefill_chunk: int = 128,
        training_share: float = 0.25,
        training_piece_tokens: int = 512,
        batch_linger_ms: float = 40.0,
        accept_input_dtypes: tuple[str, ...] = (),
        compile_decode: bool = False,
    ):
        if not stages:
            raise ValueError("a daemon needs at least one stage")
        self.model_name = model_name
        self.stages = stages
        self.sessions = sessions
        self.gate = ComputeGate(training_share=training_share)
        self.training_piece_tokens = training_piece_tokens
        self.scheduler = StepScheduler(
            self._run_batch,
            max_batch_tokens=max_batch_tokens,
            prefill_chunk=prefill_chunk,
            linger_s=batch_linger_ms / 1000,
            is_open=sessions.is_open,
            gate=self.gate,
        )
        self.jobs: dict[tuple[str, int, int], StageTrainingJob] = {}
        self._jobs_lock = threading.Lock()
        self.dht = None  # set by the daemon once its DHT runs (replica averaging)
        self.checkpoint_dir: Path | None = None  # where adapter jobs checkpoint
        self.in_main_thread = lambda fn: fn()  # the daemon runs job construction on its main
        # thread (hivemind's averager installs a signal handler; see node.main_thread)
        any_stage = next(iter(stages.values()))
        self.config = any_stage.full_config
        weight = next(any_stage.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        self.accepts = accepted_inputs(dtype_name(self.dtype), accept_input_dtypes)
        self.compile_decode = compile_decode
        self._compiled: dict[tuple[int, int], CompiledDecode] = {}
        self.compiled_steps = 0  # steps served by a compiled decode step (scheduler thread)

    def compile_stages(self) -> dict[tuple[int, int], float | None]:
        """Compile every hosted stage's decode step now (``compile_decode``); seconds each, or
        None for a stage with adapters attached (its steps run eager, see :meth:`_run_batch`).

        A compiler failure is a :class:`DeviceError`: the daemon was asked for a compiled step
        and this machine cannot build one (no silent eager fallback).
        """
        seconds: dict[tuple[int, int], float | None] = {}
        for span, stage in self.stages.items():
            compiled = self._compiled_for(span, stage)
            if compiled is None:
                continue
            if stage_adapters(stage):
                seconds[span] = None
                continue
            try:
                seconds[span] = self.scheduler.run(compiled.warm_up, training=False)
            except Exception as exc:
                self._compiled.pop(span, None)
                raise DeviceError(
                    f"compile_decode: compiling the decode step of layers [{span[0]}, "
                    f"{span[1]}) failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                    hint="torch.compile needs a working C++ compiler (g++); or set "
                    "compile_decode: false",
                ) from exc
        return seconds

    def _compiled_for(self, span: tuple[int, int], stage: DecoderStage) -> CompiledDecode | None:
        if not self.compile_decode:
            return None
        compiled = self._compiled.get(span)
        if compiled is None or compiled.stage is not stage:  # a stage loaded again (a move)
            compiled = self._compiled[span] = CompiledDecode(stage)
        return compiled

    @property
    def context_window(self) -> int:
        return int(self.config.max_position_embeddings)

    def open_session(
        self, model: str, start: int, end: int, max_length: int, adapters: tuple[str, ...] = ()
    ) -> Session:
        if model != self.model_name:
            raise WrongModel(f"this daemon serves {self.model_name!r}, not {model!r}")
        stage = self.stages.get((start, end))
        if stage is None:
            hosted = ", ".join(f"[{s}, {e})" for s, e in sorted(self.stages))
            raise SpanNotHosted(f"layers [{start}, {end}) are not hosted here (hosted: {hosted})")
        if not 1 <= max_length <= self.context_window:
            raise (PromptTooLong if max_length > 0 else InvalidInput)(
                f"max_length must be in [1, {self.context_window}] (the model's "
                f"context window), got {max_length}"
            )
        available = sorted(stage_adapters(stage))
        unknown = [name for name in adapters if name not in available]
        if unknown:
            raise UnknownAdapter(
                f"unknown adapter(s) {unknown} on layers [{start}, {end}); "
                f"available: {', '.join(available) or 'none'}"
            )
        if len(set(adapters)) != len(adapters):
            raise InvalidInput(f"adapter list {list(adapters)} names one twice")
        return self.sessions.open(
            (start, end), max_length, stage.new_session_kv(max_length), tuple(adapters)
        )

    def _check_input(self, stage: DecoderStage, inputs: torch.Tensor) -> torch.Tensor:
        if stage.is_first:
            if inputs.dtype != torch.int64 or inputs.dim() != 2 or inputs.shape[0] != 1:
                raise InvalidInput(
                    f"first stage takes int64 token ids of shape (1, n), got "
                    f"{inputs.dtype} {list(inputs.shape)}"
                )
            vocab = stage.full_config.vocab_size
            if int(inputs.min()) < 0 or int(inputs.max()) >= vocab:
                raise InvalidInput(f"token ids must be in [0, {vocab})")
            return inputs.to(self.device)
        hidden = stage.full_config.hidden_size
        if (
            not inputs.is_floating_point()
            or inputs.dim() != 3
            or inputs.shape[0] != 1
            or inputs.shape[2] != hidden
        ):
            raise InvalidInput(
                f"stage [{stage.start}, {stage.end}) takes float hidden states of "
                f"shape (1, n, {hidden}), got {inputs.dtype} {list(inputs.shape)}"
            )
        sent = dtype_name(inputs.dtype) if inputs.dtype in DTYPES.values() else str(inputs.dtype)
        if sent not in self.accepts:
            raise DTypeMismatch(
                f"stage [{stage.start}, {stage.end}) computes in {dtype_name(self.dtype)} and "
                f"takes activations in {', '.join(self.accepts)}, not {sent} (a lossy "
                "conversion; a daemon declares it safe with accept_input_dtypes)"
            )
        if not torch.isfinite(inputs).all():
            raise InvalidInput("hidden states contain NaN or inf")
        return inputs.to(device=self.device, dtype=self.dtype)

    def step(
        self,
        session_id: str,
        position: int,
        inputs: torch.Tensor,
        *,
        sampling: SamplingParams | None = None,
        return_logits: bool = False,
    ) -> StepResult:
        """Validate a step here, compute it in the scheduler's next batches, return its result."""
        session = self.sessions.acquire(session_id)
        try:
            stage = self.stages[session.stage_key]
            inputs = self._check_input(stage, inputs)
            n_new = inputs.shape[1]
            if n_new < 1:
                raise InvalidInput("a step brings at least one new position")
            if not 0 <= position <= session.length:
                raise PositionAhead(
                    f"step at position {position}, but the session's cache holds "
                    f"{session.length} positions"
                )
            if position + n_new > session.max_length:
                raise ContextOverflow(
                    f"positions {position}..{position + n_new} exceed the session's "
                    f"max_length {session.max_length}"
                )
            pending = PendingStep(session, position, inputs, sampling, return_logits)
            return self.scheduler.submit(pending).result()
        finally:
            self.sessions.release(session)

    def _run_batch(self, stage_key: tuple[int, int], shares: list[Share]) -> None:
        """One forward of ``shares`` on a stage (the scheduler thread; see the scheduler)."""
        stage = self.stages[stage_key]
        live = []
        for share in shares:
            step = share.step
            if not self.sessions.is_open(step.session.session_id):  # closed while it waited
                step.future.set_exception(
                    SessionNotFound(f"session {step.session.session_id!r} closed mid-step")
                )
                continue
            if step.fed == 0 and step.position < step.session.length:
                step.session.cache.crop(step.position)
            live.append(share)
        if not live:
            return
        finishes = [share.finishes for share in live]
        batch = RaggedBatch([Segment(share.step.session.cache, share.tokens) for share in live])
        inputs = torch.cat([share.inputs for share in live], dim=1)
        compiled = None  # prefill, several sessions, or adapters: the eager step
        if CompiledDecode.takes(batch) and not stage_adapters(stage):
            compiled = self._compiled_for(stage_key, stage)
        try:
            with torch.inference_mode():  # in the scheduler's inference turn
                if compiled is not None:
                    out = compiled(inputs, batch.segments[0].kv)
                    self.compiled_steps += 1
                else:
                    with batch_adapters(
                        stage, [s.step.session.adapters for s in live], [s.tokens for s in live]
                    ):
                        out = stage.forward_batch(inputs, batch)
        except Exception:
            # the caches may now be half-written: drop the sessions rather than serve from them
            for share in live:
                self.sessions.close(share.step.session.session_id)
            raise
        batch.commit()
        for row, (share, offset, done) in enumerate(
            zip(live, batch.offsets, finishes, strict=True)
        ):
            step = share.step
            step.fed += share.tokens
            if not stage.is_last:
                step.outputs.append(out[:, offset : offset + share.tokens])
            if not done:
                continue
            if stage.is_last:
                logits = out[row].float().cpu()  # sampled and sent in float32, as generate does
                token = (
                    sample_token(logits, step.sampling, step.session.length)
                    if step.sampling is not None
                    else None
                )
                result = StepResult(
                    None, token, logits if step.return_logits else None, step.session.length
                )
            else:
                output = (
                    torch.cat(step.outputs, dim=1) if len(step.outputs) > 1 else step.outputs[0]
                )
                result = StepResult(output, None, None, step.session.length)
            step.future.set_result(result)

    def stats(self) -> dict[str, float]:
        """Sessions, cache reservations and the scheduler's recent batch figures."""
        return {**self.sessions.stats(), **self.scheduler.stats()}

    def close(self) -> None:
        """Stop the scheduler (daemon shutdown; pending steps fail) and the training jobs."""
        self.scheduler.stop()
        self.close_jobs()

    # -- training ------------------------------------------------------------------------

    def open_training_job(
        self,
        job_id: str,
        start: int,
        end: int,
        settings: JobSettings,
        *,
        model: str | None = None,
        trainer_id: str = "",
    ) -> StageTrainingJob:
        """Open (or rejoin) the training job for a hosted stage.

        Rejoining an open job re-claims it for ``trainer_id`` and, when replicas average,
        first takes the state of a replica that got further (after a fault the trainer's other
        stages may have fallen behind).
        """
        if model is not None and model != self.model_name:
            raise WrongModel(
                f"this daemon serves {self.model_name!r}; the trainer expects "
                f"{model!r}. Point the trainer at a swarm of its base model."
            )
        stage = self.stages.get((start, end))
        if stage is None:
            raise SpanNotHosted(f"layers [{start}, {end}) are not hosted here")
        if not job_id:
            raise InvalidInput("job_id must not be empty")
        key = (job_id, start, end)
        with self._jobs_lock:
            job = self.jobs.get(key)
            if job is None:

                def create() -> StageTrainingJob:
                    with self.gate.training():  # attaching an adapter changes the stage's modules
                        return StageTrainingJob(
                            stage,
                            settings,
                            accept_input_dtypes=tuple(self.accepts),
                            job_id=job_id,
                            model=self.model_name,
                            dht=self.dht,
                            checkpoint_dir=self.checkpoint_dir,
                            piece_tokens=self.training_piece_tokens,
                        )

                job = self.in_main_thread(create)
                self.jobs[key] = job
            elif job.settings != settings:
                raise JobSettingsConflict(f"job {job_id!r} is open with other settings")
            job.claim(trainer_id)
            job.sync_from_peers()  # a replica that got further wins (no compute lock held)
        return job

    def training_job(
        self, job_id: str, start: int, end: int, trainer_id: str = ""
    ) -> StageTrainingJob:
        job = self.jobs.get((job_id, start, end))
        if job is None:
            raise JobNotFound(f"no training job {job_id!r} on layers [{start}, {end})")
        job.claim(trainer_id)
        return job

    def train_forward(
        self,
        job: StageTrainingJob,
        microbatch_id: str,
        tensors: dict[str, torch.Tensor],
        loss_scale: float,
        *,
        evaluate: bool = False,
        **options,
    ) -> dict:
        """``options``: the DPO ones of :meth:`StageTrainingJob.forward` (``sequence``,
        ``reference``, ``reference_adapter``)."""
        return job.forward(
            microbatch_id,
            tensors,
            loss_scale,
            evaluate=evaluate,
            compute_turn=self.scheduler.run,
            **options,
        )

    def train_backward(
        self, job: StageTrainingJob, microbatch_id: str, grad: torch.Tensor | None
    ) -> torch.Tensor | None:
        return job.backward(microbatch_id, grad, compute_turn=self.scheduler.run)

    def optimizer_step(
        self,
        job: StageTrainingJob,
        *,
        samples: float = 1.0,
        discard: bool = False,
        checkpoint: bool = False,
        trainer_step: int | None = None,
    ) -> StepReport | None:
        """Average (no gate held: it waits for other replicas), then step in a training turn."""
        if discard:
            with self.gate.training():
                job.discard()
            return None
        return job.optimizer_step(
            samples,
            checkpoint=checkpoint,
            compute_turn=self.scheduler.run,
            trainer_step=trainer_step,
        )

    def close_jobs(self) -> None:
        """Checkpoint every adapter job and leave the averaging groups (daemon shutdown)."""
        with self._jobs_lock:
            for key, job in list(self.jobs.items()):
                try:
                    job.close()
                except Exception:
                    log.exception("closing training job %s failed", key[0])
            self.jobs.clear()
