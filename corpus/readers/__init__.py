"""The corpus side of each Gas Town reader (:mod:`gastown` parses the files). Each registers
every record it reads in the ledger, turns records into units, and quarantines malformed ones
with file, line and the reader's reason."""

from corpus.readers.beads import read_beads
from corpus.readers.claude_code import read_claude_code
from corpus.readers.docs import read_docs
from corpus.readers.formulas import read_formulas
from corpus.readers.transcripts import read_transcripts

__all__ = ["read_beads", "read_claude_code", "read_docs", "read_formulas", "read_transcripts"]
