"""Prompt assembly: the one place that turns a turn of an agent session into a prompt with a
retrieved context block in front of it.

The block looks like this (``N`` entries, best first)::

    <<<BEGIN NODE0 CONTEXT rig=gastown role=polecat>>>
    [1] beads: .beads/issues.jsonl (gt-12, updated 2025-01-05T10:00:00+00:00)
    Bead gt-12: ...

    [2] configs: polecats/CLAUDE.md
    ...
    <<<END NODE0 CONTEXT>>>

and is followed by a blank line and the plain prompt. Its size is measured with the caller's
``count_tokens`` — the agent client passes the serving model's tokenizer (``lambda s:
len(tokenizer.encode(s, add_special_tokens=False))``) — on the complete rendered text, so the
block never exceeds ``budget_tokens``: a hit that does not fit is truncated (if at least
``min_entry_tokens`` remain) or left out. With no store (RAG off) the prompt is returned as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from base.errors import ConfigError
from rag.retrieval import Hit, RetrievalSettings, retrieve
from rag.store import RagStore

logger = logging.getLogger(__name__)

BEGIN_MARKER = "<<<BEGIN NODE0 CONTEXT"
END_MARKER = "<<<END NODE0 CONTEXT>>>"
TRUNCATION_MARK = " [...]"

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class ContextDoc:
    """A document placed in a context block, for the session's provenance record."""

    id: str
    collection: str
    source: str
    source_sha256: str
    score: float
    similarity: float
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "collection": self.collection,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "score": round(self.score, 4),
            "similarity": round(self.similarity, 4),
            "truncated": self.truncated,
        }


@dataclass(frozen=True)
class ContextBlock:
    """A rendered context block (``text`` is ``""`` when nothing was retrieved or fits)."""

    text: str
    documents: tuple[ContextDoc, ...]
    tokens: int
    budget_tokens: int
    considered: int  # hits retrieved before fitting

    def prepend_to(self, prompt: str) -> str:
        """The prompt with this block in front of it; the plain prompt if the block is empty."""
        return f"{self.text}\n\n{prompt}" if self.text else prompt

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "budget_tokens": self.budget_tokens,
            "considered": self.considered,
            "documents": [d.to_dict() for d in self.documents],
        }


@dataclass(frozen=True)
class AssembledPrompt:
    """What the agent client sends: the prompt text, and the context block used (None if off)."""

    text: str
    context: ContextBlock | None


def _entry_header(n: int, hit: Hit) -> str:
    facts = [f for f in (hit.bead_id, f"updated {hit.updated_at}" if hit.updated_at else "") if f]
    return f"[{n}] {hit.collection}: {hit.source}" + (f" ({', '.join(facts)})" if facts else "")


def _render(header: str, entries: list[str]) -> str:
    return "\n".join([header, "\n\n".join(entries), END_MARKER])


def fit_context(
    hits: list[Hit],
    *,
    header: str,
    budget_tokens: int,
    count_tokens: TokenCounter,
    min_entry_tokens: int = 48,
) -> ContextBlock:
    """Render hits (best first) into a block of at most ``budget_tokens`` tokens."""
    entries: list[str] = []
    used: list[ContextDoc] = []
    for hit in hits:
        head = _entry_header(len(entries) + 1, hit)
        full = f"{head}\n{hit.text}"
        truncated = False
        if count_tokens(_render(header, [*entries, full])) > budget_tokens:
            room = budget_tokens - count_tokens(_render(header, [*entries, head]))
            if room < min_entry_tokens:
                continue  # a later, shorter hit may still fit
            full = _truncate(
                hit.text,
                lambda body, h=head: (
                    count_tokens(_render(header, [*entries, f"{h}\n{body}"])) <= budget_tokens
                ),
            )
            if full is None:
                continue
            full, truncated = f"{head}\n{full}", True
        entries.append(full)
        used.append(
            ContextDoc(
                hit.id,
                hit.collection,
                hit.source,
                hit.source_sha256,
                hit.score,
                hit.similarity,
                truncated,
            )
        )
    if not entries:
        return ContextBlock("", (), 0, budget_tokens, len(hits))
    text = _render(header, entries)
    tokens = count_tokens(text)
    if tokens > budget_tokens:  # impossible by construction; fail closed rather than overrun
        raise AssertionError(f"context block of {tokens} tokens exceeds {budget_tokens}")
    return ContextBlock(text, tuple(used), tokens, budget_tokens, len(hits))


def _truncate(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest word-prefix of ``text`` (plus a truncation mark) for which ``fits`` holds."""
    words = text.split(" ")
    lo, hi = 0, len(words) - 1  # prefix lengths; the whole text is known not to fit
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = " ".join(words[:mid]).rstrip() + TRUNCATION_MARK
        if mid > 0 and fits(candidate):
            best, lo = candidate, mid + 1
        else:
            hi = mid - 1
    return best


def assemble_context(
    query: str,
    *,
    store: RagStore,
    rig: str | None,
    role: str | None,
    budget_tokens: int = 2048,
    count_tokens: TokenCounter,
    settings: RetrievalSettings | None = None,
    min_entry_tokens: int = 48,
) -> ContextBlock:
    """Retrieve for the current turn and fit the hits into a marked context block.

    Args:
        query: the text retrieved for — the current turn of the session.
        store: an open :class:`~rag.store.RagStore`.
        rig: only documents of this rig (None: every rig in the store).
        role: only documents of this role or of every role (None: no role filter).
        budget_tokens: the block's maximum size in tokens, markers included.
        count_tokens: counts tokens the way the serving model does (its tokenizer).
        settings: retrieval knobs (k, candidates, recency, dedup).
        min_entry_tokens: smallest truncated entry worth including.

    Returns:
        The block; its ``tokens`` never exceed ``budget_tokens``.
    """
    if budget_tokens < 0:
        raise ConfigError(f"budget_tokens must be >= 0, got {budget_tokens}")
    hits = retrieve(store, query, rig=rig, role=role, settings=settings) if query.strip() else []
    header = f"{BEGIN_MARKER} rig={rig or '*'} role={role or '*'}>>>"
    block = fit_context(
        hits,
        header=header,
        budget_tokens=budget_tokens,
        count_tokens=count_tokens,
        min_entry_tokens=min_entry_tokens,
    )
    logger.debug(
        "context block: %d of %d hits, %d/%d tokens",
        len(block.documents),
        len(hits),
        block.tokens,
        budget_tokens,
    )
    return block


def assemble_prompt(
    prompt: str,
    *,
    store: RagStore | None,
    rig: str | None,
    role: str | None,
    budget_tokens: int = 2048,
    count_tokens: TokenCounter,
    query: str | None = None,
    settings: RetrievalSettings | None = None,
    min_entry_tokens: int = 48,
) -> AssembledPrompt:
    """The prompt for one turn: context block + prompt, or the plain prompt when ``store`` is None.

    ``query`` defaults to ``prompt``; pass the current turn alone when ``prompt`` carries the
    whole conversation.
    """
    if store is None:
        return AssembledPrompt(prompt, None)
    block = assemble_context(
        prompt if query is None else query,
        store=store,
        rig=rig,
        role=role,
        budget_tokens=budget_tokens,
        count_tokens=count_tokens,
        settings=settings,
        min_entry_tokens=min_entry_tokens,
    )
    return AssembledPrompt(block.prepend_to(prompt), block)
