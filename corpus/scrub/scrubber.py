"""The scrubber: all layers over one text, sure findings replaced, uncertain ones reported.

Layers, in order: vendor detectors (keyword-prefiltered regexes), context detectors
(assignments, CLI flags, URL passwords, auth headers), personal data (e-mail, IP, home
directories), detect-secrets (library plugins + filters), and the high-entropy check.
Overlaps are resolved deterministically (:func:`~corpus.scrub.findings.resolve`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from corpus.scrub.assignments import scan_assignments
from corpus.scrub.entropy import scan_entropy
from corpus.scrub.findings import Finding, apply, resolve
from corpus.scrub.library import DetectSecretsLayer
from corpus.scrub.pii import scan_pii
from corpus.scrub.vendor import scan_vendor


@dataclass
class ScrubResult:
    """A scrubbed text with what was replaced and what could not be decided."""

    text: str
    replaced: list[Finding] = field(default_factory=list)
    uncertain: list[Finding] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    """One line per uncertain finding (masked, never the secret itself)."""


class Scrubber:
    """Scans and scrubs text; one instance is reused for a whole build.

    Args:
        use_library: run the detect-secrets layer.
        use_entropy: run the high-entropy check.
        scrub_pii: replace e-mail addresses, IP addresses and home directories.
    """

    def __init__(
        self, *, use_library: bool = True, use_entropy: bool = True, scrub_pii: bool = True
    ) -> None:
        self._library = DetectSecretsLayer() if use_library else None
        self._entropy = use_entropy
        self._pii = scrub_pii
        self.counts: Counter[str] = Counter()
        """Placeholder type → number of replacements, over the scrubber's lifetime."""

    def scan(self, text: str) -> list[Finding]:
        """All findings of all layers, overlaps resolved, in text order."""
        lowered = text.lower()
        found = scan_vendor(text, lowered) + scan_assignments(text, lowered)
        if self._pii:
            found += scan_pii(text)
        if self._library is not None:
            found += self._library.scan(text, found)
        if self._entropy:
            found += scan_entropy(text)
        return resolve(found)

    def scrub(self, text: str) -> ScrubResult:
        """Replace sure findings by typed placeholders; report uncertain ones."""
        findings = self.scan(text)
        sure = [f for f in findings if f.confidence == "sure"]
        uncertain = [f for f in findings if f.confidence == "uncertain"]
        self.counts.update(f.type for f in sure)
        return ScrubResult(
            text=apply(text, sure),
            replaced=sure,
            uncertain=uncertain,
            reasons=[f.describe(text) for f in uncertain],
        )
