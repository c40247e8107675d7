"""The conventions fingerprint of a rig, and how far a rig has drifted from one.

The fingerprint is the sha256 of every convention document the training corpus saw: each
``CLAUDE.md`` and ``AGENTS.md`` (current versions, not ``history/``) and each
``*.formula.toml`` of the rig, by path relative to the rig root. It is recorded when a version
is registered; ``node0 model stale`` compares it with the rig as it is today.

Drift score: the share of documents (of the union of both sets) that changed, appeared or
disappeared, in [0, 1]. A version is stale when the score exceeds the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from base.hashing import sha256_file
from gastown.layout import DOC_NAMES, FORMULA_SUFFIX, HISTORY_DIR

DEFAULT_STALE_THRESHOLD = 0.0  # any change to a convention document makes a version stale


def conventions_fingerprint(rig_root: str | Path) -> dict[str, str]:
    """``{path relative to the rig: sha256}`` of the rig's convention documents and formulas."""
    root = Path(rig_root)
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel.split("/", 1)[0] == HISTORY_DIR:
            continue
        if path.name in DOC_NAMES or path.name.endswith(FORMULA_SUFFIX):
            found[rel] = sha256_file(path)
    return found


@dataclass(frozen=True)
class Drift:
    """How the rig's documents differ from a recorded fingerprint."""

    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    total: int = 0

    @property
    def score(self) -> float:
        if not self.total:
            return 0.0
        return (len(self.changed) + len(self.added) + len(self.removed)) / self.total

    def as_dict(self) -> dict:
        return {
            "changed": self.changed,
            "added": self.added,
            "removed": self.removed,
            "documents": self.total,
            "drift_score": round(self.score, 4),
        }


def drift(recorded: dict[str, str], today: dict[str, str]) -> Drift:
    """Compare a recorded fingerprint with today's."""
    return Drift(
        changed=sorted(p for p in recorded.keys() & today.keys() if recorded[p] != today[p]),
        added=sorted(today.keys() - recorded.keys()),
        removed=sorted(recorded.keys() - today.keys()),
        total=len(recorded.keys() | today.keys()),
    )
