"""Write the Gas Town preference pairs: a convention followed vs violated (byte-identical reruns).

    python samples/dpo/make_gastown_preferences.py   # rewrites the two JSONL files beside it

Each pair comes from one example of the conventions SFT set (``samples/sft``): the prompt is the
example's turns up to its last user turn, ``chosen`` is its last assistant turn (the town's
command: ``bd``, ``gt sling``, ``gt mail``, ``gt prime``, ``gt handoff``), and ``rejected`` is the
same answer with that command swapped for the raw shell, git, GitHub or hand-edited file the
convention replaces. Only the command differs, so the preference is about the convention and
nothing else. The train and held-out pairs come from the SFT train and held-out files (no work
item or phrasing shared). Records follow ``dataload.schema.DPOPair``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SFT = HERE.parent / "sft"

# (pattern of the convention's command line, its violation); \1… are the pattern's groups
VIOLATIONS = [
    (r"\$ bd ready\b.*", "$ grep -rn TODO ."),
    (r"\$ bd create (.*)", r"$ gh issue create \1"),
    (
        r"\$ bd update (\S+) --status (\S+).*",
        r"$ sed -i '/\1/s/open/\2/' .beads/issues.jsonl",
    ),
    (r"\$ bd update (\S+)(.*)", r"$ vim .beads/issues.jsonl  # \1\2"),
    (r"\$ bd close (\S+).*", r"$ sed -i '/\1/s/open/closed/' .beads/issues.jsonl"),
    (r"\$ bd show (\S+).*", r"$ grep \1 .beads/issues.jsonl"),
    (r"\$ bd dep add (\S+) (\S+).*", r"$ echo '\1 depends on \2' >> TODO.md"),
    (r"\$ bd list\b.*", "$ cat .beads/issues.jsonl"),
    (r"\$ gt sling (\S+) (\S+).*", r"$ git checkout -b \2/\1 && git push origin \2/\1"),
    (r"\$ gt mail send (\S+)(.*)", r"$ tmux send-keys -t \1\2 Enter"),
    (r"\$ gt prime\b.*", "$ cat README.md"),
    (r"\$ gt handoff\b.*", "$ git add -A && git commit -m wip && git push --force"),
    (r"\$ (bd|gt) (.*)", r"$ echo '\2' >> NOTES.md"),
]


def violate(text: str) -> str | None:
    """``text`` with its first town command replaced by its violation (None: no command)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        for pattern, replacement in VIOLATIONS:
            if re.fullmatch(pattern, line):
                lines[i] = re.sub(pattern, replacement, line)
                return "\n".join(lines)
    return None


def pair(example: dict, source: str, line: int) -> dict | None:
    turns = example["turns"]
    last = turns[-1]
    rejected = violate(last["text"])
    if rejected is None or turns[-2]["speaker"] != "user":
        return None
    prompt = turns[:-1]
    body = json.dumps([prompt, last["text"], rejected], sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    provenance = {
        "source_kind": "doc",
        "file": source,
        "line": line,
        "line_end": line,
        "rig": "gastown",
        "role": example["role"],
        "sha256": digest,
    }
    return {
        "schema_version": "node0.dpo/1",
        "id": f"dpo-{digest[:16]}",
        "role": example["role"],
        "task": example["task"],
        "prompt": prompt,
        "chosen": [last],
        "rejected": [{"speaker": "assistant", "text": rejected}],
        "failure_mode": "ignored_conventions",
        "quality_score": 1.0,
        "chosen_provenance": provenance,
        "rejected_provenance": {**provenance, "file": "samples/dpo/make_gastown_preferences.py"},
    }


def main() -> None:
    for split in ("train", "heldout"):
        name = f"gastown_conventions.{split}.jsonl"
        rows = []
        for n, raw in enumerate((SFT / name).read_text().splitlines(), start=1):
            made = pair(json.loads(raw), f"samples/sft/{name}", n)
            if made is not None:
                rows.append(json.dumps(made, sort_keys=True))
        (HERE / f"gastown_preferences.{split}.jsonl").write_text("\n".join(rows) + "\n")
        print(f"{split}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
