"""The scrubber: all layers over one text, sure findings replaced, uncertain ones reported.

Layers, in order: vendor detectors (keyword-prefiltered rules from ``rules/vendor.toml``),
context detectors (assignments, CLI flags, URL passwords, auth headers; then the scored ones of
:mod:`corpus.scrub.context`: password flags, netrc/pgpass, any Authorization scheme, URL
query parameters, prose), personal data (e-mail, IP, home directories, phone and card
numbers), detect-secrets (library plugins + filters), and the high-entropy check.
Overlaps are resolved deterministically (:func:`~corpus.scrub.findings.resolve`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from corpus.scrub.assignments import scan_assignments
from corpus.scrub.context import scan_context
from corpus.scrub.entropy import scan_entropy
from corpus.scrub.findings import Finding, apply, resolve
from corpus.scrub.library import DetectSecretsLayer
from corpus.scrub.numbers import scan_numbers
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
        scrub_pii: replace e-mail addresses, IP addresses, home directories, phone and payment
            card numbers.
        keep_private_ips: keep private / link-local / unique-local IP addresses (the corpus
            build's default, ``scrub.keep_private_ips``; off here so that other users of the
            scrubber, such as the RAG sanitizer, keep the stricter behaviour they were built on).
        sure_score: a context candidate scoring this (context strength + value shape) is
            replaced.
        uncertain_score: one scoring this but below ``sure_score`` quarantines its example.
    """

    def __init__(
        self,
        *,
        use_library: bool = True,
        use_entropy: bool = True,
        scrub_pii: bool = True,
        keep_private_ips: bool = False,
        sure_score: float = 5.0,
        uncertain_score: float = 3.0,
    ) -> None:
        if not 0 < uncertain_score <= sure_score:
            raise ValueError(
                f"need 0 < uncertain_score <= sure_score, got {uncertain_score}, {sure_score}"
            )
        self._library = DetectSecretsLayer() if use_library else None
        self._entropy = use_entropy
        self._pii = scrub_pii
        self._keep_private = keep_private_ips
        self._sure, self._uncertain = sure_score, uncertain_score
        self.counts: Counter[str] = Counter()
        """Placeholder type → number of replacements, over the scrubber's lifetime."""

    def scan(self, text: str) -> list[Finding]:
        """All findings of all layers, overlaps resolved, in text order."""
        lowered = text.lower()
        found = scan_vendor(text, lowered) + scan_assignments(text, lowered)
        found += scan_context(text, lowered, sure=self._sure, uncertain=self._uncertain)
        if self._pii:
            found += scan_pii(text, keep_private_ips=self._keep_private)
            found += scan_numbers(text)
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
