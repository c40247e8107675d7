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

DPO (``data.kind: dpo``, :mod:`training.dpo_step`): a batch is pairs, a micro-batch
``micro_batch_size`` pairs; the last stage returns sequence log-probs and the trainer computes
the pair losses from them and the pairs' reference log-probs, which come from the same stages
with adapters off and are cached per pair in the run directory
(:mod:`training.reference_cache`). Each step's reward metrics go on the progress line and into
the run record; held-out evaluation gives the held-out pair loss and preference accuracy.
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
import torch

from base.errors import CheckpointError, ConfigError, Node0Error, PeerFailureError, SwarmError
from base.refusals import call_failure
from base.routing import plan_route
from dataload.collate import Batch
from dataload.order import DataPosition
from lora.config import OptimizerSettings
from provenance import RunDir, atomic_write
from training.config import TrainConfig
from training.dpo_step import (
    DPOObjective,
    PairMicroBatch,
    pair_microbatches,
    pipeline_dpo_eval,
    pipeline_dpo_step,
    pipeline_sequence_logprobs,
)
from training.init_adapter import InitAdapter
from training.loss_scaler import DynamicLossScaler
from training.pipeline_step import MicroBatch, pipeline_eval_loss, pipeline_train_step
from training.reference_cache import ReferenceCache, row_key
from training.route import is_route_failure, open_route, refusal_error
from training.stage_client import StageTrainClient

log = logging.getLogger(__name__)

TRAINER_CHECKPOINT = "trainer_checkpoint.json"
REFERENCE_CACHE = "reference_logprobs.json"
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
    dpo: list[dict] = field(default_factory=list)
    """Per step of a DPO run: TRL's reward metrics (rewards/chosen, rewards/rejected,
    rewards/accuracies, rewards/margins) of the step's pairs."""
    heldout_dpo: dict[int, dict] = field(default_factory=dict)
    """DPO runs: held-out loss and reward metrics by step (0: before training)."""

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
        init: InitAdapter | None = None,
        load_init: Callable[[list, InitAdapter], int] | None = None,
        resuming: bool = False,
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
        self.dpo = config.data.kind == "dpo"
        self.objective = DPOObjective(config.dpo.beta, config.dpo.label_smoothing)
        self.reference: ReferenceCache | None = None
        self.init = init
        self.load_init = load_init  # attaches ``init`` on the swarm's daemons (node0 train)
        self.resuming = resuming
        self._init_attached = False
        # a daemon attaches an init adapter with the settings of its adapter_config.json, and
        # the job must ask for exactly those (the config's differ at most in init_seed)
        self.lora = init.settings if init is not None else config.lora

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
            lora=self.lora,
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
        if self.init is not None and not self._init_attached:
            self._attach_init(records)
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
        if fingerprints != {self.lora.fingerprint()}:
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
        if self.dpo:
            self._open_reference_cache()
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

    def _attach_init(self, records: list) -> None:
        """Attach the init adapter under the trained adapter's name on every daemon, once."""
        cfg, init = self.config, self.init
        held = sorted({r.endpoint for r in records if cfg.adapter in (r.adapters or ())})
        if held and not self.resuming and cfg.replicas == 1:
            raise ConfigError(
                f"adapter {cfg.adapter!r} is already on {', '.join(held)}: a run initialised "
                f"from {init.source} trains a fresh adapter name",
                hint="name another adapter, or --resume the run that trained it",
            )
        if self.load_init is None:
            raise ConfigError("init_from needs a swarm to attach the init adapter on")
        attached = self.load_init(records, init)
        self._init_attached = True
        self.echo(
            f"[init] {cfg.adapter!r} starts from {init.source} (sha256 {init.sha256[:16]}…; "
            f"attached on {attached} daemon(s))"
        )

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

    # -- DPO reference ---------------------------------------------------------------------
    def _open_reference_cache(self) -> None:
        cfg = self.config
        info = self.loaders.tokenizer_info
        provenance = {
            "model": cfg.model,
            "reference": cfg.dpo.reference_adapter or "base (adapters off)",
            "stage_dtypes": self.precision.get("stage_dtypes"),
            "tokenizer": info.fingerprint,
            "prompt_mode": cfg.data.prompt_mode,
            "max_length": cfg.data.max_length,
            "truncation": cfg.data.truncation,
        }
        if self.reference is not None and self.reference.provenance == provenance:
            return
        path = self.run.path / REFERENCE_CACHE if cfg.dpo.cache_reference else None
        self.reference = ReferenceCache(path, provenance)

    def _with_reference(self, mbs: list[PairMicroBatch]) -> list[PairMicroBatch]:
        """Fill the micro-batches' reference log-probs: from the cache, else one reference
        forward through the stages for the micro-batches that miss a pair."""
        cache = self.reference
        missing = []
        for mb in mbs:
            keys = _pair_keys(mb)
            found = [cache.get(k) for k in keys] if self.config.dpo.cache_reference else [None]
            if all(f is not None for f in found):
                cache.reused += len(keys)
                mb.ref_chosen = torch.tensor([c for c, _ in found], dtype=torch.float32)
                mb.ref_rejected = torch.tensor([r for _, r in found], dtype=torch.float32)
            else:
                missing.append(mb)
        if missing:
            computed = pipeline_sequence_logprobs(
                self.stages,
                [mb.rows for mb in missing],
                reference=True,
                reference_adapter=self.config.dpo.reference_adapter or "",
            )
            for mb, logps in zip(missing, computed, strict=True):
                k = mb.pairs
                mb.ref_chosen, mb.ref_rejected = logps[:k].clone(), logps[k:].clone()
                for key, c, r in zip(
                    _pair_keys(mb), mb.ref_chosen.tolist(), mb.ref_rejected.tolist(), strict=True
                ):
                    cache.put(key, c, r)
        return mbs

    # -- data ----------------------------------------------------------------------------
    def position_for(self, step: int) -> DataPosition:
        train = self.loaders.train
        per_epoch = train.num_batches(0)
        return train.position(step // per_epoch, step % per_epoch)

    def heldout_loss(self) -> float | None:
        """The held-out loss (DPO: the mean pair loss; its reward metrics go to
        ``state.heldout_dpo`` under the current step)."""
        held = self.loaders.heldout
        if held is None:
            return None
        if self.dpo:
            figures = self.heldout_dpo()
            self.state.heldout_dpo[self.state.step] = figures
            return figures["loss"]
        mbs = [
            mb
            for batch in held.batches(epochs=1)
            for mb in microbatches(batch, self.config.micro_batch_size)
        ]
        loss, _ = self._with_reroute(lambda: pipeline_eval_loss(self.stages, mbs))
        return loss

    def heldout_dpo(self) -> dict[str, float]:
        """Held-out pair loss, preference accuracy and reward margins of the current policy."""
        mbs = [
            mb
            for batch in self.loaders.heldout.batches(epochs=1)
            for mb in pair_microbatches(batch, self.config.micro_batch_size)
        ]
        return self._with_reroute(
            lambda: pipeline_dpo_eval(self.stages, self._with_reference(mbs), self.objective)
        )

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
        if self.reference is not None:
            self.reference.save()
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
                    "dpo": self.state.dpo if self.dpo else None,
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
            save = cfg.checkpoint_every > 0 and (step + 1) % cfg.checkpoint_every == 0
            grad_scale = self.scaler.scale if self.scaler is not None else None
            step_kw = dict(
                schedule=cfg.schedule,
                checkpoint=save or step + 1 == total,
                on_sync=lambda: self.set_state("syncing"),
                grad_scale=grad_scale,
            )
            try:
                if self.dpo:
                    pairs = pair_microbatches(batch, cfg.micro_batch_size)
                    result = pipeline_dpo_step(
                        self.stages,
                        self._with_reference(pairs),
                        step,
                        self.objective,
                        samples=float(batch.pairs),
                        **step_kw,
                    )
                    batch = batch.batch  # its rows, for the token count
                else:
                    result = pipeline_train_step(
                        self.stages,
                        microbatches(batch, cfg.micro_batch_size),
                        step,
                        samples=float(batch.input_ids.shape[0]),
                        **step_kw,
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
            if self.dpo:
                self.state.dpo.append(result.metrics)
                self.run.set("dpo", self.dpo_record())
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
            rewards = _rewards_line(result.metrics) if self.dpo else ""
            self.echo(
                f"[train] step {step}/{total}  loss {result.loss:.4f}  {rewards}"
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

    def dpo_record(self) -> dict:
        """The DPO part of the run record: objective, per-step metrics, reference cache."""
        cfg = self.config.dpo
        return {
            "beta": cfg.beta,
            "label_smoothing": cfg.label_smoothing,
            "reference": cfg.reference_adapter or "base (adapters off)",
            "steps": self.state.dpo,
            "heldout": self.state.heldout_dpo,
            "reference_cache": self.reference.describe() if self.reference else None,
        }


def _pair_keys(mb: PairMicroBatch) -> list[str]:
    rows, k = mb.rows, mb.pairs
    mask = rows.attention_mask.bool()
    return [
        row_key(pid, rows.input_ids[i][mask[i]], rows.input_ids[k + i][mask[k + i]])
        for i, pid in enumerate(mb.pair_ids)
    ]


def _rewards_line(metrics: dict) -> str:
    return (
        f"rewards/chosen {metrics['rewards/chosen']:+.4f}  "
        f"rewards/rejected {metrics['rewards/rejected']:+.4f}  "
        f"margins {metrics['rewards/margins']:+.4f}  "
        f"accuracy {metrics['rewards/accuracies']:.2f}  "
    )


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return str(call_failure(exc))
    return str(exc)


def _refusal(exc: grpc.RpcError) -> Node0Error:
    """A stage's refusal mid-run as the error of its reason's family (exit code per family)."""
    return refusal_error(exc, "a stage refused the request")
