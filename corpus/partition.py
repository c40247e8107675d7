"""Partition keys: the task of an example (when its source does not say) and output paths.

Tasks are inferred from the commands and words in the conversation with an ordered rule
table; the first rule with the most hits wins, ties broken by table order (deterministic).
"""

from __future__ import annotations

import re

# (task, patterns): order matters for ties
TASK_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bead-creation", (r"\bbd create\b", r"\bbd close\b", r"\bbd update\b")),
    ("planning", (r"\bbd dep\b", r"\bepic\b", r"\bplan\b", r"\bgt sling\b", r"\bconvoy\b")),
    ("code-review", (r"\breview\b", r"\bgt mr\b", r"\brequest(?:ing)? changes\b", r"\bdiff\b")),
    (
        "git-workflow",
        (
            r"\bgit (?:push|pull|rebase|merge|checkout|commit|branch)\b",
            r"\bgt done\b",
            r"\brefinery\b",
            r"\bmerge queue\b",
        ),
    ),
    (
        "monitoring",
        (
            r"\bgt polecat list\b",
            r"\bgt nudge\b",
            r"\bgt peek\b",
            r"\bpatrol\b",
            r"\bheartbeat\b",
            r"\bhealth\b",
        ),
    ),
    ("housekeeping", (r"\bbd compact\b", r"\bprune\b", r"\bwisps?\b", r"\brotate\b")),
    (
        "code-change",
        (r"\bgo test\b", r"\bimplement", r"\bfix(?:ed)?\b", r"\[Edit\]", r"\brefactor"),
    ),
)
_COMPILED = tuple((task, tuple(re.compile(p, re.I) for p in pats)) for task, pats in TASK_RULES)
DEFAULT_TASK = "general"


def infer_task(text: str) -> str:
    """The task whose patterns occur most often in ``text`` (``general`` if none)."""
    best, best_hits = DEFAULT_TASK, 0
    for task, patterns in _COMPILED:
        hits = sum(len(p.findall(text)) for p in patterns)
        if hits > best_hits:
            best, best_hits = task, hits
    return best


def slug(value: str) -> str:
    """A safe partition name: lowercase letters, digits, ``-``, ``_``, ``.``."""
    out = re.sub(r"[^a-z0-9_.\-]+", "-", value.lower()).strip("-.")
    return out or "unknown"


def partition_path(kind: str, role: str, task: str) -> str:
    """``sft/<role>/<task>.jsonl`` or ``dpo/<role>/<task>.jsonl``."""
    return f"{kind}/{slug(role)}/{slug(task)}.jsonl"
