"""Run inference steps for the stages a daemon hosts.

One step extends a session's KV-cache with the new positions and returns the stage output. A
step may also rewind: a ``position`` below the cache length first crops the cache to it (the
client does this when a conversation's re-tokenized history diverges from what is cached).
Compute is serialised by one lock: torch already uses every core for a single step.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from base.sampler import SamplingParams, sample_token
from lora.stage_adapters import adapters as stage_adapters
from lora.stage_adapters import use_adapters
from models.stage_module import DecoderStage
from pipeline_stages.errors import (
    ContextOverflow,
    InvalidInput,
    JobNotFound,
    JobSettingsConflict,
    PositionAhead,
    PromptTooLong,
    SpanNotHosted,
    UnknownAdapter,
    WrongModel,
)
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
        self, model_name: str, stages: dict[tuple[int, int], DecoderStage], sessions: SessionManager
    ):
        if not stages:
            raise ValueError("a daemon needs at least one stage")
        self.model_name = model_name
        self.stages = stages
        self.sessions = sessions
        self._compute = threading.Lock()
        self.jobs: dict[tuple[str, int, int], StageTrainingJob] = {}
        self._jobs_lock = threading.Lock()
        self.dht = None  # set by the daemon once its DHT runs (replica averaging)
        self.checkpoint_dir: Path | None = None  # where adapter jobs checkpoint
        self.in_main_thread = lambda fn: fn()  # the daemon runs job construction on its main
        # thread (hivemind's averager installs a signal handler; see node.main_thread)
        any_stage = next(iter(stages.values()))
        self.config = any_stage.full_config

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
        return self.sessions.open((start, end), max_length, stage.new_cache(), tuple(adapters))

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
            return inputs
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
        if not torch.isfinite(inputs).all():
            raise InvalidInput("hidden states contain NaN or inf")
        return inputs.to(next(stage.parameters()).dtype)

    def step(
        self,
        session_id: str,
        position: int,
        inputs: torch.Tensor,
        *,
        sampling: SamplingParams | None = None,
        return_logits: bool = False,
    ) -> StepResult:
        session = self.sessions.acquire(session_id)
        try:
            return self._step(session, position, inputs, sampling, return_logits)
        finally:
            self.sessions.release(session)

    def _step(
        self,
        session: Session,
        position: int,
        inputs: torch.Tensor,
        sampling: SamplingParams | None,
        return_logits: bool,
    ) -> StepResult:
        stage = self.stages[session.stage_key]
        inputs = self._check_input(stage, inputs)
        n_new = inputs.shape[1]
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
        with self._compute, torch.inference_mode():
            if position < session.length:
                session.cache.crop(position - session.length)
                session.length = position
            try:
                if stage_adapters(stage):  # always choose the set: none means the base model
                    with use_adapters(stage, session.adapters):
                        out = stage(inputs, cache=session.cache, logits_to_keep=1)
                else:
                    out = stage(inputs, cache=session.cache, logits_to_keep=1)
            except Exception:
                # the cache may now be half-extended: drop the session rather than serve from it
                self.sessions.close(session.session_id)
                raise
            session.length += n_new
        if not stage.is_last:
            return StepResult(out, None, None, session.length)
        logits = out[0, -1]
        token = sample_token(logits, sampling, session.length) if sampling is not None else None
        return StepResult(None, token, logits if return_logits else None, session.length)

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
                    with self._compute:  # attaching an adapter changes the stage's modules
                        return StageTrainingJob(
                            stage,
                            settings,
                            job_id=job_id,
                            model=self.model_name,
                            dht=self.dht,
                            checkpoint_dir=self.checkpoint_dir,
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
    ) -> dict:
        with self._compute:
            return job.forward(microbatch_id, tensors, loss_scale, evaluate=evaluate)

    def train_backward(
        self, job: StageTrainingJob, microbatch_id: str, grad: torch.Tensor | None
    ) -> torch.Tensor | None:
        with self._compute:
            return job.backward(microbatch_id, grad)

    def optimizer_step(
        self,
        job: StageTrainingJob,
        *,
        samples: float = 1.0,
        discard: bool = False,
        checkpoint: bool = False,
    ) -> StepReport | None:
        """Average (no lock held: it waits for other replicas), then step under the lock."""
        if discard:
            with self._compute:
                job.discard()
            return None
        return job.optimizer_step(samples, checkpoint=checkpoint, compute_lock=self._compute)

    def close_jobs(self) -> None:
        """Checkpoint every adapter job and leave the averaging groups (daemon shutdown)."""
        with self._jobs_lock:
            for key, job in list(self.jobs.items()):
                try:
                    job.close()
                except Exception:
                    log.exception("closing training job %s failed", key[0])
            self.jobs.clear()
