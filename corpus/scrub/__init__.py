"""Secret and personal-data scrubbing in layers (see :mod:`corpus.scrub.scrubber`)."""

from corpus.scrub.findings import Finding, looks_like_placeholder
from corpus.scrub.scrubber import Scrubber, ScrubResult

__all__ = ["Finding", "ScrubResult", "Scrubber", "looks_like_placeholder"]
