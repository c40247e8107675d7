"""Build configuration: a pydantic model with defaults; YAML files only name values."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from base.config_loader import load_yaml_config
from gastown.roles import ROLES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourcesConfig(_Section):
    """Where each reader looks inside a rig (glob patterns relative to the rig root)."""

    transcripts: list[str] = ["transcripts/**/*.jsonl"]
    """Session transcripts in the gastown.transcript/1 JSONL format (one session per line)."""
    claude_code: list[str] = ["claude-sessions/**/*.jsonl"]
    """Claude Code session logs (one event per line)."""
    beads: list[str] = [".beads/issues.jsonl"]
    """bd's JSONL export."""
    docs: list[str] = ["**/CLAUDE.md", "**/AGENTS.md"]
    """Convention documents (current versions)."""
    history_dir: str = "history"
    """Older versions of a document live in ``<history_dir>/<doc path>/<UTC stamp>.md``."""
    formulas: list[str] = ["**/*.formula.toml"]
    """Workflow formulas."""
    exclude: list[str] = [".git/**", "**/node_modules/**"]
    """Globs excluded from every source."""


class ScrubConfig(_Section):
    """Which scrub layers run (vendor and context rules always run)."""

    detect_secrets: bool = True
    """Run the detect-secrets library layer."""
    entropy: bool = True
    """Run the high-entropy check (uncertain findings → quarantine)."""
    pii: bool = True
    """Replace e-mail addresses, IP addresses, home directories, phone and card numbers."""
    keep_private_ips: bool = True
    """Keep private (RFC 1918), link-local and unique-local IP addresses: they name no one."""
    sure_score: float = Field(5.0, gt=0.0, le=7.0)
    """A credential found by context whose score (context strength 1.5-3 + value shape 0-4)
    reaches this is replaced."""
    uncertain_score: float = Field(3.0, gt=0.0, le=7.0)
    """One scoring at least this, but below ``sure_score``, quarantines its example."""

    @model_validator(mode="after")
    def _ordered(self) -> ScrubConfig:
        if self.uncertain_score > self.sure_score:
            raise ValueError(
                f"scrub.uncertain_score ({self.uncertain_score}) must not exceed "
                f"scrub.sure_score ({self.sure_score})"
            )
        return self


class CleanConfig(_Section):
    """Duplicates, recency and reversions."""

    near_duplicate_jaccard: float = Field(0.8, ge=0.5, le=1.0)
    """Two examples whose word 3-gram Jaccard similarity reaches this are near-duplicates."""
    reversion_window: int = Field(3, ge=1)
    """How many earlier changes a new version is compared against to detect a reversion."""
    reversion_overlap: float = Field(0.5, gt=0.0, le=1.0)
    """Share of the latest change that must undo an earlier change to count as a reversion."""
    reversion_policy: Literal["review", "accept"] = "review"
    """``review``: a reverting version goes to quarantine for review; ``accept``: it wins."""
    approved_reversions: list[str] = []
    """sha256 of reverting versions a reviewer approved (they then win like any newer version)."""


class QualityConfig(_Section):
    """Per-example anomaly checks and scoring."""

    max_chars: int = Field(48_000, gt=0)
    """Examples longer than this (all turns) are anomalies."""
    min_assistant_chars: int = Field(8, ge=1)
    """Assistant text shorter than this is truncated."""
    min_compression_ratio: float = Field(0.15, gt=0.0, lt=1.0)
    """Assistant text (≥ 300 chars) that zlib compresses below this ratio is repetitive."""
    min_latin_share: float = Field(0.8, ge=0.0, le=1.0)
    """Share of letters in Latin script below which the text fails the language check."""
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    """Examples scoring below this are rejected as low quality."""
    injection_patterns: list[str] = [
        r"(?i)\bignore (?:all |any )?(?:the )?(?:previous|prior|above|earlier) "
        r"(?:instructions|rules)",
        r"(?i)\bdisregard (?:all |the )?(?:previous|prior|above|system) (?:instructions|prompt)",
        r"(?i)\byou are now (?:in )?(?:DAN|developer mode|jailbroken)",
        r"(?i)\b(?:reveal|print|show) (?:me )?(?:your|the) system prompt",
        r"<\|im_start\|>|<\|system\|>|\[INST\]|<<SYS>>",
        r"(?i)\bnew instructions?:\s",
    ]
    """Prompt-injection / instruction-poisoning regexes (checked outside system turns)."""


class GateConfig(_Section):
    """Build-level gates; any failure stops the build with exit code 9 and a report."""

    min_sft_examples: int = Field(10, ge=0)
    """Fewer accepted SFT examples than this fails the build."""
    max_quarantine_rate: float = Field(0.35, ge=0.0, le=1.0)
    """Quarantined input records / read records above this fails the build."""
    min_mean_quality: float = Field(0.7, ge=0.0, le=1.0)
    """Mean quality score of accepted examples below this fails the build."""
    leak_check: bool = True
    """Re-scan every output with the scrubber before writing; an example with a finding is
    quarantined (never written) and reported."""
    max_leak_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Examples the final leak check quarantined / examples checked above this fails the build
    (the scrubber missed more than a stray case: its layers need attention)."""


class CorpusConfig(_Section):
    """Everything `node0 corpus build` decides, with defaults."""

    target_rig: str | None = None
    """Rig whose corpus is built (default: the first rig); others contribute only if opted in."""
    roles: list[str] = list(ROLES)
    """Agent roles this build trains (default: every Gas Town role, ``gastown.roles.ROLES``); a
    transcript with another role is quarantined."""
    default_bead_role: str = "mayor"
    """Role for beads whose ``created_by`` names no role in ``roles``."""
    claude_code_unknown_outcome: Literal["sft", "reject"] = "sft"
    """Claude Code logs carry no outcome: use them as SFT examples, or reject them."""
    sources: SourcesConfig = SourcesConfig()
    scrub: ScrubConfig = ScrubConfig()
    clean: CleanConfig = CleanConfig()
    quality: QualityConfig = QualityConfig()
    gates: GateConfig = GateConfig()

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: list[str]) -> list[str]:
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            raise ValueError(f"not Gas Town roles: {unknown}; the roles are {list(ROLES)}")
        return roles

    @field_validator("default_bead_role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"{role!r} is not a Gas Town role; the roles are {list(ROLES)}")
        return role


def load_config(path: str | Path | None) -> CorpusConfig:
    """The defaults, overridden by the YAML file at ``path`` if given.

    Raises:
        ConfigError: the file is missing, not YAML, or names unknown / invalid values.
    """
    if path is None:
        return CorpusConfig()
    return load_yaml_config(path, CorpusConfig)[0]
