"""Corpus pipeline: Gas Town artifacts → scrubbed, partitioned SFT and DPO sets (docs/corpus.md)."""

from corpus.build import BuildResult, build_corpus
from corpus.config import CorpusConfig, load_config
from corpus.scrub import Scrubber

__all__ = ["BuildResult", "CorpusConfig", "Scrubber", "build_corpus", "load_config"]
