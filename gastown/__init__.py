"""Gas Town artifacts: what a rig contains and how to read it — one reader per artifact.

Every consumer (the corpus pipeline, RAG, the data loader, the inference client) reads Gas
Town files through this package and takes the role list from :mod:`gastown.roles`. Readers
return typed records with their provenance (rig, file, line, role, sha256) and report every
line or file they cannot use as a typed :class:`~gastown.problems.Problem`; they never raise
on bad input and never drop anything silently. What a problem means is the consumer's call.

This package imports only :mod:`base` and the standard library.
"""

from gastown.beads import Bead, BeadsRead, Dependency, newest_beads, read_beads
from gastown.claude_code import Block, ClaudeEvent, ClaudeLogRead, ClaudeSession, read_claude_log
from gastown.documents import ConventionDoc, read_document
from gastown.formulas import Formula, Step, newest_formulas, read_formula
from gastown.layout import (
    BEADS_FILE,
    DOC_NAMES,
    FORMULA_SUFFIX,
    HISTORY_DIR,
    RIG_SETTINGS,
    jsonl_format,
)
from gastown.problems import Problem, ProblemReason
from gastown.recency import Newest, Superseded, newest, parse_timestamp, stamp
from gastown.roles import (
    ROLE_DIRS,
    ROLES,
    SINGLE_AGENT_ROLES,
    is_role,
    role_from_address,
    role_from_name,
    role_from_path,
)
from gastown.transcripts import Transcript, TranscriptsRead, Turn, read_transcripts

__all__ = [
    "BEADS_FILE",
    "DOC_NAMES",
    "FORMULA_SUFFIX",
    "HISTORY_DIR",
    "RIG_SETTINGS",
    "ROLES",
    "ROLE_DIRS",
    "SINGLE_AGENT_ROLES",
    "Bead",
    "BeadsRead",
    "Block",
    "ClaudeEvent",
    "ClaudeLogRead",
    "ClaudeSession",
    "ConventionDoc",
    "Dependency",
    "Formula",
    "Newest",
    "Problem",
    "ProblemReason",
    "Step",
    "Superseded",
    "Transcript",
    "TranscriptsRead",
    "Turn",
    "is_role",
    "jsonl_format",
    "newest",
    "newest_beads",
    "newest_formulas",
    "parse_timestamp",
    "read_beads",
    "read_claude_log",
    "read_document",
    "read_formula",
    "read_transcripts",
    "role_from_address",
    "role_from_name",
    "role_from_path",
    "stamp",
]
