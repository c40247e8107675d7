"""One DPO optimizer step over the stages of a route, and DPO evaluation.

A DPO micro-batch is ``k`` preference pairs as ``2k`` rows (the chosen rows, then the rejected
rows, :class:`dataload.dpo.DPOBatch`'s layout), so each pair's loss is computable as soon as
its micro-batch leaves the last stage. The last stage returns per-row summed log-probs of the
labelled (completion) tokens, ``(2k,)`` float32 — logits never cross the wire. The trainer
computes the sigmoid DPO loss (:func:`dataload.losses.dpo_loss`: β, label smoothing) against
the pairs' reference log-probs and sends the gradient of the step's mean pair loss with
respect to those ``2k`` log-probs back as the last stage's backward; the rest of the backward
is SFT's. Gradient accumulation over micro-batches is therefore exact: the step's gradient is
that of the mean loss over all its pairs, as one big batch in a single process.

The reference log-probs come from the same stages with every adapter off (or a named
reference adapter): an evaluate forward with ``reference`` set, no second copy of the model
(:func:`pipeline_sequence_logprobs`; cached per pair by :mod:`training.reference_cache`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from dataload.dpo import DPOBatch
from dataload.losses import dpo_loss, dpo_reward_metrics
from training.pipeline_step import (
    MicroBatch,
    StepResult,
    _optimizer_steps,
    _pipeline,
)
from training.schedule import DEFAULT_SCHEDULE, FORWARD, Schedule, stage_orders
from training.stage_client import StageTrainClient


@dataclass
class PairMicroBatch:
    """``k`` pairs as ``2k`` rows (chosen first) and their reference log-probs."""

    rows: MicroBatch
    pair_ids: tuple[str, ...]
    ref_chosen: torch.Tensor | None = None  # (k,) float32
    ref_rejected: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        return len(self.pair_ids)


def pair_microbatches(batch: DPOBatch, size: int | None) -> list[PairMicroBatch]:
    """Split a batch of ``n`` pairs into micro-batches of ``size`` pairs (``2·size`` rows)."""
    n, b = batch.pairs, batch.batch
    size = size or n
    out = []
    for i in range(0, n, size):
        rows = [*range(i, min(i + size, n)), *range(n + i, n + min(i + size, n))]
        out.append(
            PairMicroBatch(
                MicroBatch(b.input_ids[rows], b.attention_mask[rows], b.labels[rows]),
                batch.pair_ids[i : i + size],
            )
        )
    return out


@dataclass(frozen=True)
class DPOObjective:
    """The loss a DPO step minimises (TRL ``DPOTrainer``'s sigmoid loss)."""

    beta: float = 0.1
    label_smoothing: float = 0.0

    def loss_and_grad(
        self, mb: PairMicroBatch, logps: torch.Tensor, total_pairs: int
    ) -> tuple[float, torch.Tensor]:
        """The micro-batch's summed pair loss, and the gradient of (its share of) the step's
        mean loss with respect to its ``2k`` policy log-probs."""
        x = logps.detach().float().clone().requires_grad_(True)
        k = mb.pairs
        with torch.enable_grad():
            summed = dpo_loss(
                x[:k],
                x[k:],
                mb.ref_chosen,
                mb.ref_rejected,
                self.beta,
                label_smoothing=self.label_smoothing,
                reduction="sum",
            )
            (summed / total_pairs).backward()
        return float(summed.detach()), x.grad.detach()

    def metrics(self, policy: list[torch.Tensor], mbs: list[PairMicroBatch]) -> dict[str, float]:
        """TRL's reward metrics over every pair of ``mbs`` (``policy``: their log-probs)."""
        pc = torch.cat([p[: mb.pairs] for p, mb in zip(policy, mbs, strict=True)])
        pr = torch.cat([p[mb.pairs :] for p, mb in zip(policy, mbs, strict=True)])
        rc = torch.cat([mb.ref_chosen for mb in mbs])
        rr = torch.cat([mb.ref_rejected for mb in mbs])
        return dpo_reward_metrics(pc, pr, rc, rr, beta=self.beta)


def _check_reference(mbs: list[PairMicroBatch]) -> int:
    pairs = 0
    for mb in mbs:
        if mb.ref_chosen is None or mb.ref_rejected is None:
            raise ValueError(f"pairs {mb.pair_ids} have no reference log-probs")
        pairs += mb.pairs
    if pairs == 0:
        raise ValueError("a DPO step needs at least one pair")
    return pairs


def pipeline_dpo_step(
    stages: list[StageTrainClient],
    microbatches: list[PairMicroBatch],
    step: int,
    objective: DPOObjective,
    *,
    schedule: Schedule = DEFAULT_SCHEDULE,
    samples: float | None = None,
    checkpoint: bool = False,
    on_sync=None,
    grad_scale: float | None = None,
) -> StepResult:
    """Forward/backward every pair micro-batch as ``schedule`` says, then one optimizer step on
    every stage (as :func:`training.pipeline_step.pipeline_train_step`). ``StepResult.loss``
    is the mean pair loss; ``metrics`` holds the step's reward metrics; ``samples`` defaults
    to the pairs of the step."""
    total_pairs = _check_reference(microbatches)
    started = time.perf_counter()
    orders = stage_orders(schedule, len(stages), len(microbatches))
    grads: dict[int, torch.Tensor] = {}
    lock = threading.Lock()

    def on_last(i: int, logps: torch.Tensor):
        loss_sum, grad = objective.loss_and_grad(microbatches[i], logps, total_pairs)
        with lock:
            grads[i] = grad
        return loss_sum, logps.detach().float()

    def last_grad(i: int) -> torch.Tensor:
        with lock:
            return grads.pop(i)

    run = _pipeline(
        stages,
        [mb.rows for mb in microbatches],
        orders,
        1.0,  # the 1/pairs normalisation is in the log-prob gradients
        evaluate=False,
        grad_scale=grad_scale,
        options={"sequence_logprobs": True},
        on_last=on_last,
        last_grad=last_grad,
    )
    last = len(stages) - 1
    outs = [run.outputs[(FORWARD, last, i)] for i in range(len(microbatches))]
    loss_sum = sum(loss for loss, _ in outs)  # in micro-batch order: the same under every schedule
    reports, busy_s = _optimizer_steps(
        stages,
        run,
        step,
        float(total_pairs) if samples is None else samples,
        checkpoint=checkpoint,
        on_sync=on_sync,
        grad_scale=grad_scale,
    )
    metrics = objective.metrics([logps for _, logps in outs], microbatches)
    return StepResult(
        step=step,
        loss=loss_sum / total_pairs,
        tokens=sum(mb.rows.counted_tokens for mb in microbatches),
        applied=all(r.applied for r in reports),
        grad_norms=[r.grad_norm for r in reports],
        reports=reports,
        busy_s=busy_s,
        wall_s=time.perf_counter() - started,
        metrics=metrics,
    )


def pipeline_sequence_logprobs(
    stages: list[StageTrainClient],
    microbatches: list[MicroBatch],
    *,
    reference: bool = False,
    reference_adapter: str = "",
) -> list[torch.Tensor]:
    """Per micro-batch, each row's summed log-prob of its labelled tokens ``(rows,)`` (no
    gradient, nothing kept on the stages): the policy's, or with ``reference`` the base's with
    every adapter off (``reference_adapter``: that adapter alone)."""
    if not microbatches:
        return []
    orders = stage_orders("gpipe", len(stages), len(microbatches), backward=False)
    run = _pipeline(
        stages,
        microbatches,
        orders,
        1.0,
        evaluate=True,
        options={
            "sequence_logprobs": True,
            "reference": reference,
            "reference_adapter": reference_adapter,
        },
        on_last=lambda _i, logps: logps.detach().float(),
    )
    last = len(stages) - 1
    return [run.outputs[(FORWARD, last, i)] for i in range(len(microbatches))]


def pipeline_dpo_eval(
    stages: list[StageTrainClient],
    microbatches: list[PairMicroBatch],
    objective: DPOObjective,
) -> dict[str, float]:
    """Held-out DPO figures of the policy: mean pair loss and TRL's reward metrics (the
    micro-batches carry their reference log-probs)."""
    if not microbatches:
        return {}
    pairs = _check_reference(microbatches)
    policy = pipeline_sequence_logprobs(stages, [mb.rows for mb in microbatches])
    loss = sum(
        objective.loss_and_grad(mb, logps, pairs)[0]
        for mb, logps in zip(microbatches, policy, strict=True)
    )
    chosen_wins = sum(
        int((logps[: mb.pairs] > logps[mb.pairs :]).sum())
        for mb, logps in zip(microbatches, policy, strict=True)
    )
    return {
        "loss": loss / pairs,
        **objective.metrics(policy, microbatches),
        # the policy's own preference, log π(chosen) > log π(rejected) (not relative to the
        # reference: at step 0 TRL's rewards/accuracies is 0 by definition, every margin 0)
        "logp_accuracy": chosen_wins / pairs,
        "pairs": pairs,
    }
