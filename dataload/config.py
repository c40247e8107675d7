"""``DataConfig``: what the trainer's data loader reads and how it batches it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DataConfig(BaseModel):
    """Data loading for one trainer. YAML files only name these values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sft", "dpo"] = "sft"
    """Dataset kind: ``sft`` (``SFTExample`` lines) or ``dpo`` (``DPOPair`` lines)."""
    train: list[Path] = Field(min_length=1)
    """Training data: JSONL files and/or corpus build directories (their ``sft/**/*.jsonl`` or
    ``dpo/**/*.jsonl``, sorted). Files are read in the order given."""
    heldout: list[Path] = Field(default_factory=list)
    """Held-out data for evaluation (same forms as ``train``); never shuffled or sharded."""
    roles: list[str] | None = None
    """Keep only examples of these agent roles (``None``: all)."""
    tasks: list[str] | None = None
    """Keep only examples of these tasks (``None``: all)."""
    prompt_mode: Literal["completion", "chat"] = "completion"
    """``completion``: plain ``role: text`` blocks (default, needs no template); ``chat``: the
    tokenizer's chat template (only for models that ship one)."""
    max_length: int = Field(512, ge=8)
    """Maximum tokens per example, and the row length when packing."""
    truncation: Literal["right", "drop"] = "right"
    """``right``: keep the first ``max_length`` tokens (examples left without an assistant
    token are dropped); ``drop``: drop longer examples. Both are counted and reported."""
    batch_size: int = Field(8, ge=1)
    """Rows per batch: examples when padding, packed rows when packing."""
    packing: bool = False
    """Pack several examples per row (block-diagonal attention; SFT only)."""
    shuffle: bool = True
    """Shuffle the training order each epoch (deterministically from ``seed``)."""
    seed: int = 0
    """Seed of the sample order; the same seed gives the same batches byte for byte."""
    shard_index: int = Field(0, ge=0)
    """This trainer's shard (0-based) when several trainers split the data."""
    shard_count: int = Field(1, ge=1)
    """Number of trainers splitting the data (disjoint shards that union to the whole)."""
    strict: bool = True
    """Refuse to start when any line is malformed (each is reported with file and line). With
    ``False`` malformed lines are logged and listed in the loader's report, then skipped."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.shard_index >= self.shard_count:
            raise ValueError(
                f"shard_index {self.shard_index} must be < shard_count {self.shard_count}"
            )
        if self.packing and self.kind == "dpo":
            raise ValueError("packing is for SFT only; DPO pairs are padded")
        return self
