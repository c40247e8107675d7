"""Per-example anomaly checks and quality score.

Anomalies send an example to quarantine: empty turn, truncated answer, extreme length,
repetition, prompt-injection / instruction-poisoning phrases, and the language check (share of
Latin-script letters). The score starts at 1.0 and loses points for weak signals (very short
answers, single exchange, placeholders standing in for most of an answer); examples below
``min_score`` are rejected as low quality.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass

from corpus.config import QualityConfig
from corpus.format import Draft

_PLACEHOLDER = re.compile(r"<(?:SECRET|PII):[a-z0-9_]+>")


@dataclass(frozen=True)
class Verdict:
    anomalies: list[str]
    score: float


def _latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 40:
        return 1.0
    latin = sum(1 for c in letters if c.isascii() or "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


class QualityChecker:
    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self._injection = [re.compile(p) for p in cfg.injection_patterns]

    def check(self, d: Draft) -> Verdict:
        cfg = self.cfg
        anomalies: list[str] = []
        turns = d.turns or (d.prompt + d.chosen + d.rejected)
        answers = [t for s, t in (d.turns or d.chosen) if s == "assistant"]
        if d.kind == "dpo":
            answers_rej = [t for s, t in d.rejected if s == "assistant"]
        else:
            answers_rej = []
        if any(not t.strip() for s, t in turns if s != "system"):
            anomalies.append("empty_turn")
        for group in filter(None, (answers, answers_rej)):
            final = group[-1].strip()
            if len(final) < cfg.min_assistant_chars or final.count("```") % 2:
                anomalies.append("truncated")
                break
        total = sum(len(t) for _, t in turns)
        if total > cfg.max_chars:
            anomalies.append(f"extreme_length:{total}")
        answer_text = "\n".join(answers)
        if len(answer_text) >= 300:
            ratio = len(zlib.compress(answer_text.encode())) / len(answer_text.encode())
            if ratio < cfg.min_compression_ratio:
                anomalies.append(f"repetition:{ratio:.2f}")
        for s, t in turns:
            if s == "system":
                continue
            hit = next((p.pattern for p in self._injection if p.search(t)), None)
            if hit:
                anomalies.append("prompt_injection")
                break
        share = _latin_share("\n".join(t for s, t in turns if s != "system"))
        if share < cfg.min_latin_share:
            anomalies.append(f"language:latin_share={share:.2f}")
        score = 1.0
        if answers and max(len(a) for a in answers) < 40:
            score -= 0.2
        if (
            len([s for s, _ in turns if s == "assistant"]) == 1
            and d.kind == "sft"
            and d.provenance["source_kind"] in ("transcript", "claude_code")
        ):
            score -= 0.1
        masked = sum(len(m) for a in answers for m in _PLACEHOLDER.findall(a))
        if answer_text and masked / len(answer_text) > 0.3:
            score -= 0.4
        return Verdict(anomalies, round(max(0.0, score), 3))
