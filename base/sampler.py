"""The one canonical sampler: greedy, temperature, top-k, top-p, seeded.

A draw depends only on (logits, params, position): the random generator is seeded from the
session seed and the position of the token being chosen. So a session gives the same text on
any replica, after a failover, and on a rerun.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen.

    Attributes:
        temperature: 0 picks the most likely token (greedy); larger values flatten the
            distribution.
        top_k: keep only the k most likely tokens (0 = no limit).
        top_p: keep the smallest set of tokens whose probability reaches p (1 = no limit).
        seed: with the position, fixes every random draw.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def step_seed(seed: int, position: int) -> int:
    digest = hashlib.sha256(f"{seed}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_token(logits: torch.Tensor, params: SamplingParams, position: int) -> int:
    """Choose the token at ``position`` from its logits ``(vocab,)``."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p
        drop[0] = False  # always keep the most likely token
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    generator = torch.Generator().manual_seed(step_seed(params.seed, position))
    return int(torch.multinomial(probs, 1, generator=generator))
