"""What may enter a prompt: every document is scrubbed before it is embedded and stored.

Retrieved text is sent to the swarm's first stage, which may be another peer, so it gets the
corpus pipeline's treatment, from the corpus pipeline's own code (one implementation):

- secrets and personal data: :class:`corpus.scrub.Scrubber` finds them; *every* finding, sure
  or uncertain, is replaced by its typed placeholder (``<SECRET:github_token>``) — for
  retrieval, masking an uncertain string loses nothing worth the risk. Uncertain ones are
  reported (masked, never the value);
- prompt injection: a line that matches one of the corpus quality check's injection patterns
  (``corpus.config.QualityConfig.injection_patterns``) is replaced by :data:`INJECTION_MARK`
  and reported.

The result is a pure function of the text, so stored documents change when the scrubber does
(the indexer compares the sha256 of each stored text).
"""

from __future__ import annotations

import re
from dataclasses import replace

from rag.documents import RigRead

INJECTION_MARK = "[line removed by node0: possible prompt injection]"


class Sanitizer:
    """Scrubs secrets and removes prompt-injection lines; one instance per index run."""

    def __init__(self) -> None:
        from corpus.config import QualityConfig
        from corpus.scrub import Scrubber

        self._scrubber = Scrubber()
        self._injection = [re.compile(p) for p in QualityConfig().injection_patterns]

    def clean(self, text: str) -> tuple[str, list[str]]:
        """The text to store, and notes: the types replaced, each uncertain string masked (never
        its value) and each line removed."""
        from corpus.scrub.findings import apply

        findings = self._scrubber.scan(text)
        sure = sorted({f.type for f in findings if f.confidence == "sure"})
        notes = [f"replaced {', '.join(sure)}"] if sure else []
        notes += [
            f"masked uncertain {f.describe(text)}" for f in findings if f.confidence != "sure"
        ]
        text = apply(text, [replace(f, confidence="sure") for f in findings])
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if any(p.search(line) for p in self._injection):
                lines[i] = INJECTION_MARK
                notes.append(f"removed line {i + 1}: possible prompt injection")
        return "\n".join(lines), notes


_SANITIZER: Sanitizer | None = None


def default_sanitizer() -> Sanitizer:
    """One sanitizer per process (building the scrubber takes about a second)."""
    global _SANITIZER
    if _SANITIZER is None:
        _SANITIZER = Sanitizer()
    return _SANITIZER


def sanitize_rig(read: RigRead, sanitizer: Sanitizer | None = None) -> list[str]:
    """Clean every document of a rig read in place; returns ``"<doc id>: <note>"`` lines."""
    sanitizer = sanitizer or default_sanitizer()
    notes: list[str] = []
    for unit in read.units:
        for i, doc in enumerate(unit.documents):
            text, doc_notes = sanitizer.clean(doc.text)
            if text != doc.text:
                unit.documents[i] = replace(doc, text=text)
            notes.extend(f"{doc.id}: {n}" for n in doc_notes)
    return notes
