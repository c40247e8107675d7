"""Scoring of the scrubber on a labeled snippet set (shared by the held-out evaluations).

A **secret** snippet is caught when the scrubber quarantines it (an uncertain finding) or when
none of its listed values survives in the scrubbed text, neither whole nor as a 16-character
window that the original holds only inside the secret. A **look-alike** snippet is kept when
its text comes back unaltered and it is not quarantined.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

WINDOW = 16


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _leaks(value: str, text: str, outside: str) -> bool:
    if value in text:
        return True
    if len(value) <= WINDOW:
        return False
    windows = (value[i : i + WINDOW] for i in range(len(value) - WINDOW + 1))
    return any(w in text and w not in outside for w in windows)


def _short(s: str, n: int = 160) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def evaluate(records: list[dict], scrubber) -> dict:
    """Recall on secret snippets and retention on look-alikes, per kind, with every miss."""
    per_kind: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    misses, lost = [], []
    tp = n_secret = kept = n_clean = 0
    for i, rec in enumerate(records, 1):
        res = scrubber.scrub(rec["text"])
        quarantined = bool(res.uncertain)
        key = (rec["label"], rec["kind"])
        per_kind[key][1] += 1
        if rec["label"] == "secret":
            n_secret += 1
            outside = rec["text"]
            for s in rec["secrets"]:
                outside = outside.replace(s, "\x00")
            leaked = [s for s in rec["secrets"] if _leaks(s, res.text, outside)]
            if quarantined or not leaked:
                tp += 1
                per_kind[key][0] += 1
            else:
                misses.append((i, rec, res))
        else:
            n_clean += 1
            if quarantined or res.text != rec["text"]:
                lost.append((i, rec, res))
            else:
                kept += 1
                per_kind[key][0] += 1
    return {
        "recall": tp / n_secret,
        "kept": kept / n_clean,
        "tp": tp,
        "n_secret": n_secret,
        "n_kept": kept,
        "n_clean": n_clean,
        "per_kind": dict(per_kind),
        "misses": misses,
        "lost": lost,
    }


def report(name: str, r: dict) -> str:
    out = [
        f"{name}: recall {r['recall']:.4f} ({r['tp']}/{r['n_secret']}), "
        f"look-alikes kept {r['kept']:.4f} ({r['n_kept']}/{r['n_clean']})",
        "per kind (secret: caught/total; clean: kept/total):",
    ]
    for (label, kind), (k, n) in sorted(r["per_kind"].items()):
        if k != n:
            out.append(f"  {label:6s} {kind:24s} {k:3d}/{n:<3d}")
    for i, rec, _res in r["misses"]:
        ctx = rec.get("context", "")
        out.append(f"MISS #{i} [{rec['kind']}/{ctx}] {rec['note']}: {_short(rec['text'])}")
    for i, rec, res in r["lost"]:
        why = "; ".join(res.reasons) or ", ".join(f.type for f in res.replaced)
        ctx = rec.get("context", "")
        out.append(f"LOST #{i} [{rec['kind']}/{ctx}] {rec['note']}: {_short(rec['text'])} ({why})")
    return "\n".join(out)
