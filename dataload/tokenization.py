"""SFT tokenization with loss masking: only assistant tokens are counted.

A conversation is rendered by the canonical formatter (:func:`render_segments`) into context and
assistant segments; each segment is tokenized on its own, so a token never straddles the
boundary between prompt and answer. The first context segment is encoded exactly like an
inference prompt (:func:`encode_prompt`), so the model is trained on the token sequence it will
see at inference. Every assistant segment is followed by the tokenizer's EOS token (unless the
chat template already ended it with EOS), and those EOS tokens are counted: the model learns to
stop.

``labels`` equal ``input_ids`` on assistant tokens and :data:`IGNORE_INDEX` everywhere else;
position 0 is never counted (nothing predicts it), the same convention as transformers' causal-LM
loss, which shifts labels left by one.

Truncation policy (``max_length``):

- ``right`` (default): keep the first ``max_length`` tokens. An answer cut short loses its EOS; an
  example left with no counted token is dropped. Both are counted in :class:`EncodeStats`.
- ``drop``: an example longer than ``max_length`` is dropped and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from dataload.losses import IGNORE_INDEX
from dataload.prompt_format import PromptMode, render_segments, turns_to_messages

Truncation = Literal["right", "drop"]


@dataclass(frozen=True)
class TokenizedExample:
    """One tokenized conversation."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    """Same length as ``input_ids``; :data:`IGNORE_INDEX` where the loss does not count."""
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def counted_tokens(self) -> int:
        """Tokens the loss counts (position 0 excluded, as a shifted loss never predicts it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)

    def digest(self) -> bytes:
        """sha256 of the token and label ids (fingerprints what training actually sees)."""
        h = hashlib.sha256(self.id.encode())
        h.update(",".join(map(str, self.input_ids)).encode() + b"|")
        h.update(",".join(map(str, self.labels)).encode())
        return h.digest()


@dataclass
class EncodeStats:
    """What tokenization did to a set of examples; nothing is dropped without being counted."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    dropped_ids: list[str] = field(default_factory=list)
    counted_tokens: int = 0
    total_tokens: int = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "dropped_ids"} | {
            "dropped_ids": list(self.dropped_ids)
        }


def encode_messages(
    messages: Sequence[dict[str, str]], tokenizer, *, eos_id: int, mode: PromptMode = "completion"
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a whole conversation, untruncated.

    Args:
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, …]``.
        tokenizer: a Hugging Face tokenizer (the model's own).
        eos_id: the id appended after each assistant turn.
        mode: ``completion`` (default) or ``chat`` (the tokenizer's chat template).
    """
    ids: list[int] = []
    labels: list[int] = []
    for index, segment in enumerate(render_segments(messages, mode=mode, tokenizer=tokenizer)):
        # Only the very first segment gets the tokenizer's special tokens, as encode_prompt does
        # for an inference prompt; a chat template carries its own.
        special = index == 0 and mode == "completion"
        piece = list(tokenizer(segment.text, add_special_tokens=special).input_ids)
        if segment.trained:
            if not piece or piece[-1] != eos_id:
                piece.append(eos_id)
            labels.extend(piece)
        else:
            labels.extend([IGNORE_INDEX] * len(piece))
        ids.extend(piece)
    if labels:
        labels[0] = IGNORE_INDEX
    return ids, labels


def truncate(
    example_id: str,
    ids: list[int],
    labels: list[int],
    *,
    max_length: int,
    policy: Truncation,
    stats: EncodeStats,
) -> TokenizedExample | None:
    """Apply the truncation policy; ``None`` (and a count in ``stats``) for a dropped example."""
    stats.examples += 1
    truncated = len(ids) > max_length
    if truncated and policy == "drop":
        stats.dropped_too_long += 1
        stats.dropped_ids.append(example_id)
        return None
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    example = TokenizedExample(example_id, tuple(ids), tuple(labels), truncated)
    if example.counted_tokens == 0:
        stats.dropped_no_target += 1
        stats.dropped_ids.append(example_id)
        return None
    stats.kept += 1
    stats.truncated += int(truncated)
    stats.counted_tokens += example.counted_tokens
    stats.total_tokens += len(example)
    return example


def encode_sft(
    example,
    tokenizer,
    *,
    eos_id: int,
    max_length: int,
    mode: PromptMode = "completion",
    truncation: Truncation = "right",
    stats: EncodeStats | None = None,
) -> TokenizedExample | None:
    """Tokenize one :class:`~dataload.schema.SFTExample` with its loss mask.

    Returns ``None`` when the truncation policy drops it (counted in ``stats``).
    """
    ids, labels = encode_messages(
        turns_to_messages(example.turns), tokenizer, eos_id=eos_id, mode=mode
    )
    return truncate(
        example.id,
        ids,
        labels,
        max_length=max_length,
        policy=truncation,
        stats=stats if stats is not None else EncodeStats(),
    )
