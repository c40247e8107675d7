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

The result is a pure function of the text and of :func:`sanitizer_fingerprint`; both are stored
with each document (``raw_sha256``, ``sanitizer``), so the indexer re-sanitizes only what changed,
and everything when the scrubber changes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from base.errors import CheckpointError
from rag.documents import Document

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


@functools.cache
def sanitizer_fingerprint() -> str:
    """sha256 of everything that decides the sanitized text: the scrubber's source files, the
    detect-secrets version, the injection patterns and this module's marker. Stored with each
    document, so a changed scrubber re-sanitizes (and re-embeds) every document."""
    from corpus.config import QualityConfig

    digest = hashlib.sha256()
    spec = importlib.util.find_spec("corpus.scrub")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("corpus.scrub is not importable; the RAG indexer needs it")
    for path in sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        digest.update(metadata.version("detect-secrets").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"detect-secrets missing")
    digest.update("\n".join([*QualityConfig().injection_patterns, INJECTION_MARK]).encode())
    return digest.hexdigest()


def sanitize_documents(
    docs: list[Document], sanitizer: Sanitizer | None = None
) -> tuple[list[Document], list[str]]:
    """Cleaned copies of documents (with ``raw_sha256`` and ``sanitizer`` set), and
    ``"<doc id>: <note>"`` lines."""
    sanitizer = sanitizer or default_sanitizer()
    fingerprint = sanitizer_fingerprint()
    out: list[Document] = []
    notes: list[str] = []
    for doc in docs:
        text, doc_notes = sanitizer.clean(doc.text)
        out.append(replace(doc, text=text, raw_sha256=doc.text_sha256, sanitizer=fingerprint))
        notes.extend(f"{doc.id}: {n}" for n in doc_notes)
    return out, notes
