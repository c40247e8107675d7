"""Recency wins: the newest version of an artifact is kept, older versions are excluded.

Versions of one artifact (same bead id, session id, document path or formula name in one
rig) are ordered by their version key. Older versions are rejected as ``superseded`` (or
``exact_duplicate`` when byte-identical to the winner).

A *reversion* — a newest version whose change undoes one of the recent earlier changes — does
not silently win: with ``reversion_policy: review`` it goes to quarantine and into
``review.jsonl``, unless its sha256 is listed in ``approved_reversions``. Documents and
formulas are checked (the artifacts that carry conventions).
"""

from __future__ import annotations

from collections import defaultdict

from corpus.config import CleanConfig
from corpus.ledger import Ledger
from corpus.units import Unit

_CHECKED_KINDS = ("doc", "formula")


def _lines(text: str) -> set[str]:
    return {ln.strip() for ln in text.splitlines() if ln.strip()}


def undoes(before: str, after: str, old: str, new: str) -> float:
    """Share of the change ``old → new`` that reverses the earlier change ``before → after``."""
    a, b, c, d = _lines(before), _lines(after), _lines(old), _lines(new)
    last_change = (c - d) | (d - c)
    if not last_change:
        return 0.0
    # removes lines the earlier change added, or restores lines it removed
    undone = ((b - a) & (c - d)) | ((a - b) & (d - c))
    return len(undone) / len(last_change)


def find_reversion(versions: list[Unit], cfg: CleanConfig) -> tuple[int, float] | None:
    """``(j, share)`` if the newest change undoes the change ``versions[j-1] → versions[j]``."""
    n = len(versions)
    if n < 3:
        return None
    old, new = versions[-2].content, versions[-1].content
    best = None
    for j in range(n - 2, max(0, n - 2 - cfg.reversion_window), -1):
        share = undoes(versions[j - 1].content, versions[j].content, old, new)
        if share >= cfg.reversion_overlap and (best is None or share > best[1]):
            best = (j, share)
    return best


def apply_recency(
    units: list[Unit], ledger: Ledger, cfg: CleanConfig
) -> tuple[list[Unit], list[dict]]:
    """Kept units (newest per artifact) and review entries for flagged reversions."""
    groups: dict[tuple[str, str], list[Unit]] = defaultdict(list)
    for u in units:
        groups[(u.rig, u.artifact)].append(u)
    kept: list[Unit] = []
    review: list[dict] = []
    for (rig, artifact), versions in sorted(groups.items()):
        versions.sort(key=lambda u: u.version)
        winner = versions[-1]
        for old in versions[:-1]:
            if old.sha256 == winner.sha256:
                ledger.mark(old.refs, "rejected", "exact_duplicate", f"same as {winner.key}")
            else:
                ledger.mark(old.refs, "rejected", "superseded", f"newer version {winner.key}")
        if winner.kind in _CHECKED_KINDS:
            hit = find_reversion(versions, cfg)
            if (
                hit is not None
                and cfg.reversion_policy == "review"
                and winner.sha256 not in cfg.approved_reversions
            ):
                j, share = hit
                review.append(
                    {
                        "rig": rig,
                        "artifact": artifact,
                        "reason": "reversion",
                        "reverting_version": winner.key,
                        "reverting_sha256": winner.sha256,
                        "undone_version": versions[j].key,
                        "previous_version": versions[j - 1].key,
                        "overlap": round(share, 3),
                        "action": "approve by adding reverting_sha256 to clean.approved_reversions",
                    }
                )
                ledger.mark(
                    winner.refs,
                    "quarantined",
                    "reversion_needs_review",
                    f"undoes {versions[j].key} (overlap {share:.2f})",
                )
                continue
        kept.append(winner)
    return kept, review
