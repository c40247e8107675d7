"""Fixed probe prompts: does the model show a learned convention in its answer?

``samples/sft/probes.jsonl`` holds one probe per line: a prompt (schema turns ending with a user
turn) and ``expect``, a regular expression an answer matches when it shows the convention (for
example ``\\bbd create\\b`` for "file work as a bead"). ``avoid`` optionally names the raw
command the convention replaces, for reporting. Before/after training, generate an answer per
probe (greedy, same settings) and count :func:`shows_convention`.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dataload.jsonl_reader import read_jsonl
from dataload.prompt_format import turns_to_messages
from dataload.schema import Turn


class Probe(BaseModel):
    """One probe prompt and the pattern that shows the convention in an answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^probe-[a-z0-9\-]+$")
    role: str
    """Agent role the prompt is written for."""
    convention: str = Field(min_length=1)
    """Short name of the convention (e.g. ``bd create``)."""
    prompt: list[Turn] = Field(min_length=1)
    """Prompt turns; the last one is a user turn."""
    expect: str
    """Regular expression (searched, case-sensitive) that an answer showing the convention
    matches."""
    avoid: str | None = None
    """Optional regular expression for the raw command the convention replaces."""

    @field_validator("expect", "avoid")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @model_validator(mode="after")
    def _ends_with_user(self) -> Probe:
        if self.prompt[-1].speaker != "user":
            raise ValueError("a probe prompt must end with a user turn")
        return self

    @cached_property
    def messages(self) -> list[dict[str, str]]:
        """The prompt as formatter messages (render with ``add_generation_prompt=True``)."""
        return turns_to_messages(self.prompt)

    def shows_convention(self, answer: str) -> bool:
        return re.search(self.expect, answer) is not None

    def uses_avoided(self, answer: str) -> bool:
        return self.avoid is not None and re.search(self.avoid, answer) is not None


def load_probes(path: str | Path) -> list[Probe]:
    """Load a probe file; any malformed line raises :class:`~base.errors.DataError`."""
    return read_jsonl(path, Probe, strict=True).records


def score_probes(probes: list[Probe], answers: list[str]) -> dict:
    """How many answers show their probe's convention (and use the avoided command)."""
    if len(probes) != len(answers):
        raise ValueError(f"{len(probes)} probes but {len(answers)} answers")
    hits = [p.id for p, a in zip(probes, answers, strict=True) if p.shows_convention(a)]
    avoided = [p.id for p, a in zip(probes, answers, strict=True) if p.uses_avoided(a)]
    return {
        "probes": len(probes),
        "shows_convention": len(hits),
        "uses_avoided": len(avoided),
        "hits": hits,
    }
