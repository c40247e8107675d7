"""The trainer peer: feeds its data shard through the swarm's stages, one optimizer step at a time.

Lifecycle (``state.json`` in the run directory, and one status line per change):
``ready`` → ``training`` ⇄ ``syncing`` (stages averaging with their replicas) ⇄
``checkpointing`` → ``done``; ``degraded`` while a broken route is being replaced; ``failed``.

The data position is a function of the step (``epoch = step // batches``, ``batch = step %
batches``), so stages, which count their steps, and the trainer, which saves its position
with every checkpoint, can always be reconciled on resume.

Precision: the trainer plans its route over the stages of its ``dtype`` (all, when None), and
when a stage of the route computes in float16 (``loss_scaling: auto``) it owns the route's
dynamic loss scale (:mod:`training.loss_scaler`), sent with every micro-batch and saved with
the trainer checkpoint. It computes nothing itself: the last stage holds the head and the loss.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from base.errors import CheckpointError, ConfigError, Node0Error, PeerFailureError, SwarmError
from base.refusals import call_failure
from base.routing import plan_route
from dataload.collate import Batch
from dataload.order import DataPosition
from lora.config import OptimizerSettings
from provenance import RunDir, atomic_write
from training.config import TrainConfig
from training.loss_scaler import DynamicLossScaler
from training.pipeline_step import MicroBatch, pipeline_eval_loss, pipeline_train_step
from training.route import is_route_failure, open_route, refusal_error
from training.stage_client import StageTrainClient

log = logging.getLogger(__name__)

TRAINER_CHECKPOINT = "trainer_checkpoint.json"
STATES = ("ready", "training", "syncing", "checkpointing", "degraded", "done", "failed")


def microbatches(batch: Batch, size: int | None) -> list[MicroBatch]:
    """Split a batch into micro-batches of ``size`` rows (gradients accumulate over them)."""
    rows = batch.input_ids.shape[0]
    size = size or rows
    return [
        MicroBatch(
            batch.input_ids[i : i + size],
            batch.attention_mask[i : i + size],
            batch.labels[i : i + size],
        )
        for i in range(0, rows, size)
    ]


@dataclass
class TrainerState:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    heldout: dict[int, float] = field(default_factory=dict)
    skipped: int = 0
    reroutes: int = 0
    averaging: list[str] = field(default_factory=list)
    bubbles: list[list[float]] = field(default_factory=list)
    """Per step: each stage's idle share of the step's wall time (route order)."""
    loss_scales: list[float] = field(default_factory=list)
    """Per step, with dynamic loss scaling: the loss scale the step ran with."""

    def pipeline_metrics(self, config: TrainConfig) -> dict:
        """The pipeline's figures for the run record: schedule, micro-batches, bubbles."""
        stages = len(self.bubbles[0]) if self.bubbles else 0
        mean = [
            round(sum(step[k] for step in self.bubbles) / len(self.bubbles), 4)
            for k in range(stages)
        ]
        return {
            "schedule": config.schedule,
            "micro_batch_size": config.micro_batch_size or config.data.batch_size,
            "bubble_mean": mean,
            "bubble": self.bubbles,
        }


class SwarmTrainer:
    """Drives one trainer's shard through the swarm; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        run: RunDir,
        loaders,
        records_fn: Callable,
        run_id: str,
        trainer_id: str | None = None,
        echo=None,
    ):
        self.config = config
        self.run = run
        self.loaders = loaders
        self.records_fn = records_fn
        self.run_id = run_id
        self.trainer_id = trainer_id or secrets.token_hex(8)
        self.state = TrainerState()
        self.lifecycle = ""
        self.stages: list[StageTrainClient] = []
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.optimizer: OptimizerSettings = config.optimizer  # as sent (:meth:`_plan_precision`)
        self.scaler: DynamicLossScaler | None = None
        self.precision: dict = {}

    # -- lifecycle -----------------------------------------------------------------------
    def set_state(self, lifecycle: str, detail: str = "") -> None:
        assert lifecycle in STATES, lifecycle
        if lifecycle == self.lifecycle and not detail:
            return
        self.lifecycle = lifecycle
        atomic_write(
            self.run.path / "state.json",
            json.dumps(
                {"state": lifecycle, "step": self.state.step, "detail": detail, "at": time.time()}
            )
            + "\n",
        )
        if lifecycle not in ("training", "syncing"):  # these two change every step
            self.echo(f"[{lifecycle}] {detail}".rstrip())

    # -- route ---------------------------------------------------------------------------
    def _open_job(self, client: StageTrainClient):
        cfg = self.config
        return client.open_job(
            trainable=f"adapter:{cfg.adapter}",
            optimizer=self.optimizer,
            model=cfg.model,
            lora=cfg.lora,
            replicas=cfg.replicas,
            averaging=cfg.averaging,
            checkpoint_every=0,
        )

    def _plan_precision(self, records: list) -> list:
        """The records the route is planned over (those of the trainer's dtype), and the job's
        loss scaling for the route they give; raises SwarmError when they give none."""
        cfg = self.config
        if cfg.dtype is not None:
            held = sorted({r.dtype for r in records})
            records = [r for r in records if r.dtype == cfg.dtype]
            try:
                route = plan_route(records, cfg.model)
            except SwarmError as exc:
                raise SwarmError(
                    f"no route of {cfg.dtype} stages (the trainer's dtype; the swarm's stages "
                    f"compute in {', '.join(held) or 'nothing'}): {exc}"
                ) from exc
        else:
            route = plan_route(records, cfg.model)
        dtypes = [hop.dtype for hop in route]
        scaling, self.optimizer = cfg.loss_scaling, cfg.optimizer
        if scaling == "auto" and "float16" in dtypes:
            # said explicitly: a float32 stage of a mixed route would resolve auto to none
            scaling = "dynamic"
            self.optimizer = cfg.optimizer.model_copy(update={"loss_scaling": scaling})
        elif scaling == "auto":
            scaling = "none"
        if scaling == "dynamic" and self.scaler is None:
            self.scaler = DynamicLossScaler(
                cfg.initial_loss_scale, growth_interval=cfg.loss_scale_growth_interval
            )
        elif scaling != "dynamic":
            self.scaler = None
        self.precision = {"stage_dtypes": dtypes, "loss_scaling": scaling}
        return records

    def connect(self) -> int:
        """Open the job on a route; returns the step every stage agrees it is at."""
        self.close_route()
        records = self._plan_precision(self.records_fn())
        self.stages, replies = open_route(
            records,
            self.config.model,
            job_id=self.run_id,
            trainer_id=self.trainer_id,
            shard_index=self.config.data.shard_index,
            open_job=self._open_job,
            timeout=self.config.step_timeout,
        )
        steps = {(c.start, c.end): int(r.step) for c, r in zip(self.stages, replies, strict=True)}
        fingerprints = {r.fingerprint for r in replies}
        if fingerprints != {self.config.lora.fingerprint()}:
            raise ConfigError(
                f"stages hold adapter {self.config.adapter!r} with other LoRA "
                f"settings: {sorted(fingerprints)}"
            )
        if len(set(steps.values())) != 1 and self.config.replicas > 1:
            # replicas of the run stepped while we were away; the next shared averaging round's
            # state check brings the stages level with them (docs/lora.md)
            self.echo(
                "[route] stages are at steps "
                + ", ".join(f"[{s}, {e}) {n}" for (s, e), n in sorted(steps.items()))
                + "; they catch up "
                "with their replicas over the next steps"
            )
            return max(steps.values())
        if len(set(steps.values())) != 1:
            raise CheckpointError(
                "the stages of the route are at different steps: "
                + ", ".join(f"[{s}, {e}) step {n}" for (s, e), n in sorted(steps.items())),
                hint="restore every stage's checkpoint of this run, or start a new run_id",
            )
        route = " → ".join(
            f"[{c.start},{c.end})@{c.endpoint} {dtype}"
            for c, dtype in zip(self.stages, self.precision["stage_dtypes"], strict=True)
        )
        resumed = {r.resumed_from for r in replies} - {""}
        scaling = (
            f"; dynamic loss scaling from {self.scaler.scale:g}" if self.scaler is not None else ""
        )
        self.echo(
            f"[route] {route}"
            + (f" (state from {', '.join(sorted(resumed))})" if resumed else "")
            + scaling
        )
        return next(iter(steps.values()))

    def close_route(self) -> None:
        for client in self.stages:
            client.close()
        self.stages = []

    def _reroute(self, error: BaseException) -> int:
        """Discard the abandoned step where possible and open a new route (state degraded)."""
        self.state.reroutes += 1
        self.set_state(
            "degraded",
            f"route broke at step {self.state.step + 1}: {_short(error)}; looking for replicas",
        )
        for client in self.stages:
            try:
                client.optimizer_step(self.state.step, discard=True)
            except grpc.RpcError:
                pass
        deadline = time.monotonic() + self.config.reroute_timeout
        while True:
            try:
                step = self.connect()
                self.set_state("training", f"rerouted; continuing from step {step}")
                return step
            except SwarmError as exc:  # no replica takes the job yet: retry
                if time.monotonic() > deadline:
                    raise PeerFailureError(
                        f"no usable route for {self.config.reroute_timeout:g} s after a peer "
                        f"failed: {_short(exc)}"
                    ) from exc
                time.sleep(2.0)

    # -- data ----------------------------------------------------------------------------
    def position_for(self, step: int) -> DataPosition:
        train = self.loaders.train
        per_epoch = train.num_batches(0)
        return train.position(step // per_epoch, step % per_epoch)

    def heldout_loss(self) -> float | None:
        held = self.loaders.heldout
        if held is None:
            return None
        mbs = [
            mb
            for batch in held.batches(epochs=1)
            for mb in microbatches(batch, self.config.micro_batch_size)
        ]
        loss, _ = self._with_reroute(lambda: pipeline_eval_loss(self.stages, mbs))
        return loss

    def _with_reroute(self, call):
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                if not is_route_failure(exc):
                    raise _refusal(exc) from exc
                self._reroute(exc)

    # -- training ------------------------------------------------------------------------
    def checkpoint(self) -> None:
        self.set_state("checkpointing", f"step {self.state.step}")
        atomic_write(
            self.run.path / TRAINER_CHECKPOINT,
            json.dumps(
                {
                    "format": "node0-trainer-checkpoint/1",
                    "run_id": self.run_id,
                    "trainer_id": self.trainer_id,
                    "step": self.state.step,
                    "position": self.position_for(self.state.step).model_dump(mode="json"),
                    "losses": self.state.losses,
                    "heldout": self.state.heldout,
                    "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                },
                indent=1,
            )
            + "\n",
        )
        self.set_state("training")

    def train(self, start_step: int, on_step=None) -> TrainerState:
        cfg = self.config
        self.state.step = start_step
        total = cfg.steps
        started, tokens_done = time.monotonic(), 0
        self.set_state("training", f"steps {start_step + 1}..{total}")
        step = start_step
        while step < total:
            batch = self.loaders.train.batch_at(self.position_for(step))
            mbs = microbatches(batch, cfg.micro_batch_size)
            save = cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0
            grad_scale = self.scaler.scale if self.scaler is not None else None
            try:
                result = pipeline_train_step(
                    self.stages,
                    mbs,
                    step,
                    schedule=cfg.schedule,
                    samples=float(batch.input_ids.shape[0]),
                    checkpoint=save or step + 1 == total,
                    on_sync=lambda: self.set_state("syncing"),
                    grad_scale=grad_scale,
                )
            except grpc.RpcError as exc:
                if not is_route_failure(exc):
                    raise _refusal(exc) from exc
                resumed = self._reroute(exc)
                if resumed != step:  # a replica that went on without us: follow its step
                    self.echo(f"[degraded] stages are at step {resumed}; trainer follows")
                step = self.state.step = resumed
                continue
            self.set_state("training")
            # a stage whose averaging round loaded a replica further along reports its step:
            # follow it, so this trainer ends with its replicas' run instead of a solo step after
            shared = max((int(r.step) for r in result.reports), default=0)
            if shared > step + 1:
                self.echo(
                    f"[train] a replica further along set the stages to step {shared}; "
                    "trainer follows"
                )
            step = max(step + 1, min(shared, total))
            self.state.step = step
            self.state.losses.append(result.loss)
            if not result.applied:
                self.state.skipped += 1
            if self.scaler is not None:
                self.state.loss_scales.append(grad_scale)
                self.scaler.update(found_inf=not result.applied)  # only overflows skip a step
                self.run.set(
                    "precision",
                    {
                        **self.precision,
                        "loss_scale": self.state.loss_scales,
                        "overflows": self.scaler.overflows,
                    },
                )
            notes = sorted({r.averaging for r in result.reports})
            self.state.averaging.append("; ".join(notes))
            bubble = result.bubble
            self.state.bubbles.append([round(b, 4) for b in bubble])
            self.run.set("pipeline", self.state.pipeline_metrics(cfg))
            tokens_done += int(batch.attention_mask.sum())  # tokens processed, not padding
            elapsed = time.monotonic() - started
            rate = tokens_done / elapsed if elapsed else 0.0
            eta = (total - step) * elapsed / max(1, step - start_step)
            skipped = (
                ""
                if result.applied
                else f"  SKIPPED ({'; '.join(r.reason for r in result.reports if r.reason)})"
            )
            scale = f"  loss scale {grad_scale:g}" if grad_scale is not None else ""
            self.echo(
                f"[train] step {step}/{total}  loss {result.loss:.4f}  "
                f"{rate:.0f} tok/s  ETA {eta:.0f}s  bubble "
                f"{'/'.join(f'{b:.0%}' for b in bubble)}  {'; '.join(notes)}{skipped}{scale}"
            )
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                self.state.heldout[step] = self.heldout_loss()
                self.echo(f"[eval] step {step}: held-out loss {self.state.heldout[step]:.4f}")
            if save or step == total:
                self.checkpoint()
            if on_step is not None:
                on_step(self, result)
        return self.state


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return str(call_failure(exc))
    return str(exc)


def _refusal(exc: grpc.RpcError) -> Node0Error:
    """A stage's refusal mid-run as the error of its reason's family (exit code per family)."""
    return refusal_error(exc, "a stage refused the request")
