"""The canonical training losses, as pure functions of tensors.

Conventions (the same as transformers' causal-LM loss): ``logits`` are ``(batch, seq, vocab)``
for the positions of ``labels`` ``(batch, seq)``; the logit at position ``t`` predicts the label
at ``t + 1`` (labels are shifted left by one inside these functions); labels equal to
:data:`IGNORE_INDEX` are not counted. Logits are upcast to float32.

- SFT: :func:`masked_cross_entropy` (mean over counted tokens), or :func:`cross_entropy_sum`
  when a step spans several micro-batches (sum per micro-batch, divide by the step's count).
- DPO (sigmoid loss, Rafailov et al. 2023):
  ``L = −log σ(β·[(log πθ(y_w|x) − log π_ref(y_w|x)) − (log πθ(y_l|x) − log π_ref(y_l|x))])``
  with ``log π(y|x)`` = :func:`sequence_logprobs` (sum over completion tokens only). The
  reference is the same model with its adapters disabled; at step 0 (LoRA B = 0) the policy
  equals the reference and the loss is ln 2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (batch, seq, vocab) over labels "
            f"{tuple(labels.shape)} (batch, seq)"
        )
    return logits[:, :-1, :].float(), labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(label_{t+1} | ≤ t)`` per position, 0 where not counted. Shape ``(batch, seq-1)``."""
    shifted_logits, shifted_labels = _shifted(logits, labels)
    nll = F.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (batch, seq-1)
    return -nll


def counted_tokens(labels: torch.Tensor) -> int:
    """Tokens a shifted loss over ``labels`` counts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label each position's logit predicts: ``labels`` shifted left, the last not counted.

    ``targets[:, t] = labels[:, t + 1]``, so a slice of positions ``[a, b)`` of the logits and
    the same slice of the targets make a self-contained piece of the loss.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels {tuple(labels.shape)} must be (batch, seq)")
    ignored = labels.new_full((labels.shape[0], 1), IGNORE_INDEX)
    return torch.cat([labels[:, 1:], ignored], dim=1)


def target_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``logits`` ``(batch, n, vocab)`` against aligned ``targets``."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (batch, n, vocab) over targets "
            f"{tuple(targets.shape)} (batch, n)"
        )
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def target_logprob_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the counted ``targets`` (aligned as in
    :func:`target_cross_entropy_sum`): ``(batch,)``, float32. Summed over pieces of positions it
    gives :func:`sequence_logprobs`."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (batch, n, vocab) over targets "
            f"{tuple(targets.shape)} (batch, n)"
        )
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (batch, n)
    return -nll.sum(-1)


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over counted positions, and their number.

    Dividing the sums of all micro-batches of a step by the step's total count gives exactly the
    mean loss of one big batch (gradient accumulation without bias towards short micro-batches).
    """
    shifted_logits, shifted_labels = _shifted(logits, labels)
    return target_cross_entropy_sum(shifted_logits, shifted_labels), counted_tokens(labels)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over counted tokens (transformers' causal-LM loss).

    Raises:
        ValueError: no token is counted (the mean would be NaN).
    """
    total, count = cross_entropy_sum(logits, labels)
    if count == 0:
        raise ValueError("no labelled token in the batch; the loss is undefined")
    return total / count


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """``log π(y|x)``: the sum of the counted tokens' log-probabilities per sequence.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)``, :data:`IGNORE_INDEX` on prompt and padding.
        segment_ids: for packed rows, ``(batch, seq)`` example numbers 1…S (0 = padding).

    Returns:
        ``(batch,)``; with ``segment_ids``, ``(batch, S)`` — one sum per packed example.
    """
    per_token = token_logprobs(logits, labels)  # (batch, seq-1)
    if segment_ids is None:
        return per_token.sum(-1)
    seg = segment_ids[:, 1:]  # the segment of the predicted token
    count = int(segment_ids.max())
    out = per_token.new_zeros(per_token.shape[0], count + 1)
    out.scatter_add_(1, seg, per_token)
    return out[:, 1:]


def dpo_rewards(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards ``β·(log πθ − log π_ref)`` of the chosen and rejected completions."""
    return beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    *,
    label_smoothing: float = 0.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> torch.Tensor:
    """Sigmoid DPO loss from per-pair sequence log-probs (each ``(pairs,)``).

    With ``label_smoothing`` ε (cDPO, TRL's ``loss_type="sigmoid"``):
    ``−(1−ε)·log σ(β·m) − ε·log σ(−β·m)``. ``reduction="sum"`` lets a step spanning
    micro-batches divide by its total pair count.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    logits = beta * margin.float()
    losses = -F.logsigmoid(logits) * (1 - label_smoothing)
    if label_smoothing:
        losses = losses - F.logsigmoid(-logits) * label_smoothing
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def dpo_reward_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
) -> dict[str, float]:
    """TRL ``DPOTrainer``'s reward metrics over the pairs given (means over pairs):
    ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` (chosen reward > rejected
    reward) and ``rewards/margins`` (chosen − rejected)."""
    chosen, rejected = dpo_rewards(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta
    )
    chosen, rejected = chosen.float(), rejected.float()
    return {
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/accuracies": float((chosen > rejected).float().mean()),
        "rewards/margins": float((chosen - rejected).mean()),
    }
