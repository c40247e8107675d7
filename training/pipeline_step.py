"""One optimizer step of pipeline training over the stages of a route.

For each micro-batch: forward through the stages in order (token ids → hidden states → the last
stage computes the summed token loss from labels, so logits never cross the wire), then
backward in reverse order (each stage returns the gradient of its input). The micro-batches
flow through the stages as a pipeline schedule says (:mod:`training.schedule`: ``1f1b``,
``gpipe`` or ``sequential``), so stage k can run micro-batch i+1 while stage k+1 runs
micro-batch i. The loss of a step is normalised by the number of labelled tokens in the whole
step, so gradient accumulation over micro-batches gives exactly the gradient of the step's
mean token loss — the same as one big batch in a single process, under any schedule.

With dynamic loss scaling (float16 stages, :mod:`training.loss_scaler`) every forward also
carries the step's loss scale as the ``grad_scale`` tensor, and the optimizer steps go first
stage first: the first stage sees every overflow of the step (a stage that overflowed sends a
non-finite gradient upstream), so when it skips, the other stages discard the step instead of
applying it — the stages skip together and stay equal.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from training.schedule import (
    DEFAULT_SCHEDULE,
    FORWARD,
    Op,
    Schedule,
    ScheduleRun,
    run_schedule,
    stage_orders,
)
from training.stage_client import StageTrainClient


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (batch, seq) int64
    attention_mask: torch.Tensor  # (batch, seq) int64
    labels: torch.Tensor  # (batch, seq) int64, -100 = not counted

    @property
    def counted_tokens(self) -> int:
        return int((self.labels[:, 1:] != -100).sum())


@dataclass
class StepResult:
    step: int
    loss: float  # mean token loss over the step
    tokens: int
    applied: bool
    grad_norms: list[float]
    reports: list  # OptimizerStepResponse per stage, in route order
    busy_s: list[float]  # per stage: seconds its calls took this step (trainer side)
    wall_s: float  # the step's wall time, forwards to the last optimizer step
    metrics: dict = field(default_factory=dict)  # DPO: TRL's reward metrics of the step

    @property
    def bubble(self) -> list[float]:
        """Per stage, in route order: the share of the step's wall time it had no call."""
        return [max(0.0, 1.0 - busy / self.wall_s) if self.wall_s else 0.0 for busy in self.busy_s]


def _pipeline(
    stages: list[StageTrainClient],
    microbatches: list[MicroBatch],
    orders: list[list[Op]],
    scale: float,
    *,
    evaluate: bool,
    grad_scale: float | None = None,
    options: dict | None = None,
    on_last: Callable[[int, object], object] | None = None,
    last_grad: Callable[[int], torch.Tensor] | None = None,
) -> ScheduleRun:
    """Run the forwards (and, unless ``evaluate``, the backwards) of every micro-batch in
    ``orders`` (:func:`training.schedule.stage_orders`).

    DPO (:mod:`training.dpo_step`): ``options`` go with every forward
    (:meth:`StageTrainClient.forward`'s ``sequence_logprobs``, ``reference``…); ``on_last(i,
    output)`` turns the last stage's output of micro-batch ``i`` into its result (computing
    the gradient of its log-probs), and ``last_grad(i)`` is what the last stage's backward
    of micro-batch ``i`` takes.
    """
    ids = [uuid.uuid4().hex for _ in microbatches]
    last = len(stages) - 1
    extra = {}
    if grad_scale is not None:
        extra["grad_scale"] = torch.tensor([grad_scale], dtype=torch.float32)
    options = options or {}

    def call(k: int, op: Op, arg):
        mb, mb_id = microbatches[op.microbatch], ids[op.microbatch]
        if op.kind == FORWARD:
            tensors = {
                "input": mb.input_ids if k == 0 else arg,
                "attention_mask": mb.attention_mask,
                **extra,
            }
            if k == last:
                tensors["labels"] = mb.labels
            output, loss_sum, _ = stages[k].forward(
                mb_id, tensors, loss_scale=scale, evaluate=evaluate, **options
            )
            if k == last and on_last is not None:
                return on_last(op.microbatch, output)
            return loss_sum if k == last else output
        if k == last and last_grad is not None:
            arg = last_grad(op.microbatch)
        return stages[k].backward(mb_id, arg)

    return run_schedule(orders, call)


def _loss_sum(run: ScheduleRun, stages: int, microbatches: int) -> float:
    # summed in micro-batch order: the same float under every schedule
    return sum(run.outputs[(FORWARD, stages - 1, i)] for i in range(microbatches))


def pipeline_train_step(
    stages: list[StageTrainClient],
    microbatches: list[MicroBatch],
    step: int,
    *,
    schedule: Schedule = DEFAULT_SCHEDULE,
    samples: float | None = None,
    checkpoint: bool = False,
    on_sync=None,
    grad_scale: float | None = None,
) -> StepResult:
    """Forward/backward every micro-batch as ``schedule`` says, then one optimizer step on
    every stage.

    ``grad_scale``: the loss scale of a job with dynamic loss scaling (None: none); the
    stages then step as the module docstring says, and ``StepResult.applied`` is False when
    the step overflowed.

    ``samples`` (default: the rows of all micro-batches) weighs this trainer's gradient when
    the stages average with their replicas. ``on_sync`` is called before the optimizer steps
    (the trainer shows "syncing": replicas may be averaging). A failed call raises once no
    call of the step runs any more; the stages then hold the step's partial gradients (the
    caller discards them).
    """
    total_tokens = sum(mb.counted_tokens for mb in microbatches)
    if total_tokens == 0:
        raise ValueError("a step needs at least one labelled token")
    started = time.perf_counter()
    orders = stage_orders(schedule, len(stages), len(microbatches))
    run = _pipeline(
        stages, microbatches, orders, 1.0 / total_tokens, evaluate=False, grad_scale=grad_scale
    )
    loss_sum = _loss_sum(run, len(stages), len(microbatches))
    if samples is None:
        samples = float(sum(mb.input_ids.shape[0] for mb in microbatches))
    reports, busy_s = _optimizer_steps(
        stages, run, step, samples, checkpoint=checkpoint, on_sync=on_sync, grad_scale=grad_scale
    )
    return StepResult(
        step=step,
        loss=loss_sum / total_tokens,
        tokens=total_tokens,
        applied=all(r.applied for r in reports),
        grad_norms=[r.grad_norm for r in reports],
        reports=reports,
        busy_s=busy_s,
        wall_s=time.perf_counter() - started,
    )


def _optimizer_steps(
    stages: list[StageTrainClient],
    run: ScheduleRun,
    step: int,
    samples: float,
    *,
    checkpoint: bool,
    on_sync,
    grad_scale: float | None,
) -> tuple[list, list[float]]:
    """The optimizer step on every stage once a step's backwards ran (see the module
    docstring for the order under loss scaling): the reports, and each stage's busy seconds."""
    if on_sync is not None:
        on_sync()

    def optimizer_step(stage: StageTrainClient, discard: bool = False):
        return stage.optimizer_step(step, samples=samples, checkpoint=checkpoint, discard=discard)

    if grad_scale is None:
        timed = _parallel([lambda s=s: optimizer_step(s) for s in stages])
    else:  # the first stage decides whether the step overflowed; the others follow it
        timed = _parallel([lambda: optimizer_step(stages[0])])
        discard = not timed[0][0].applied
        timed += _parallel([lambda s=s: optimizer_step(s, discard) for s in stages[1:]])
    reports = [report for report, _ in timed]
    busy_s = [busy + seconds for busy, (_, seconds) in zip(run.busy_s, timed, strict=True)]
    return reports, busy_s


def _parallel(calls) -> list[tuple[object, float]]:
    """Run the stages' optimizer steps concurrently: each may wait for its averaging group,
    and the waits overlap instead of adding up. Returns (result, seconds) per call."""

    def timed(call):
        started = time.perf_counter()
        return call(), time.perf_counter() - started

    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(timed, call) for call in calls]
        return [future.result() for future in futures]


def pipeline_eval_loss(
    stages: list[StageTrainClient],
    microbatches: list[MicroBatch],
) -> tuple[float, int]:
    """Mean token loss of ``microbatches`` (no gradients, nothing kept on the stages); the
    forwards flow through the stages as a pipeline."""
    if not microbatches:
        return float("nan"), 0
    tokens = sum(mb.counted_tokens for mb in microbatches)
    orders = stage_orders("gpipe", len(stages), len(microbatches), backward=False)
    run = _pipeline(stages, microbatches, orders, 1.0, evaluate=True)
    loss_sum = _loss_sum(run, len(stages), len(microbatches))
    return (loss_sum / tokens if tokens else float("nan")), tokens
