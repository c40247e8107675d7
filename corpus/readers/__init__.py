"""Readers, one per source kind. Each registers every record it reads in the ledger and
quarantines malformed ones with file, line and reason."""

from corpus.readers.beads import read_beads
from corpus.readers.claude_code import read_claude_code
from corpus.readers.docs import read_docs
from corpus.readers.formulas import read_formulas
from corpus.readers.transcripts import read_transcripts

__all__ = ["read_beads", "read_claude_code", "read_docs", "read_formulas", "read_transcripts"]
