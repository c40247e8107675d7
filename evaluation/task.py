"""Eval tasks and the suite file, as data (``configs/eval/``).

A **task** is one request to an agent in a fixture rig, and how to score what it did:

.. code-block:: yaml

    - id: bead-create-bug
      category: bead_management
      prompt: "File a bug: …"
      fixture: {base: rig, git: true, beads: [...]}
      scorer: {kind: bead_created, title: [colon], type: bug, priority: 1}

A **suite** (``configs/eval/suite.yaml``) names the task files, the category weights of the
composite, the gate thresholds, the loop limits and the generation settings. Every field is
checked when the file is read (unknown keys refused, naming the field); a scorer's own
parameters are checked by its scorer (:func:`evaluation.scorers.check_spec`) when the suite
loads, so a typo fails before any model runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from base.config_loader import load_yaml_config
from base.errors import ConfigError

CATEGORIES = (
    "bead_management",
    "git_workflow",
    "convention_adherence",
    "planning",
    "code_execution",
)
Category = Literal[
    "bead_management", "git_workflow", "convention_adherence", "planning", "code_execution"
]
EVAL_DIR = Path(__file__).resolve().parent.parent / "configs" / "eval"
DEFAULT_SUITE = EVAL_DIR / "suite.yaml"


class FixtureSpec(BaseModel):
    """The sandbox a task starts in (see :mod:`evaluation.sandbox`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | None = Field(
        default=None, description="Folder under configs/eval/fixtures/ copied as the rig."
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="Extra files (path relative to the rig -> text)."
    )
    beads: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Beads written to .beads/issues.jsonl (bd's fields; defaults filled in).",
    )
    git: bool = Field(default=False, description="git init, and commit everything on main.")
    hook: bool = Field(
        default=False, description="Install the fixture's pre-commit hook (implies git)."
    )
    remote: bool = Field(
        default=False, description="A local bare remote `origin` with main pushed (implies git)."
    )
    branches: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Branches made from main before the task: name -> files it changes "
        "(one commit each; main stays checked out).",
    )
    main_after: dict[str, str] = Field(
        default_factory=dict,
        description="Files committed on main after the branches were cut (for conflicts).",
    )


class Task(BaseModel):
    """One eval task: a request, its fixture, its scorer and its weight in its category."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Unique id in the suite.")
    category: Category = Field(description="One of the five categories.")
    prompt: str = Field(min_length=1, description="The user's request.")
    role: str = Field(default="polecat", description="Gas Town role named in the system message.")
    fixture: FixtureSpec = Field(default_factory=FixtureSpec, description="Starting sandbox.")
    scorer: dict[str, Any] = Field(description="`kind` and its parameters (evaluation.scorers).")
    pass_score: float = Field(
        default=100.0, ge=0, le=100, description="The task passes at this score (0-100) or more."
    )
    max_steps: int | None = Field(default=None, ge=1, description="Overrides the suite's.")

    @model_validator(mode="after")
    def _scorer_kind(self) -> Task:
        if not isinstance(self.scorer.get("kind"), str):
            raise ValueError("scorer needs a string `kind`")
        return self


class Limits(BaseModel):
    """Per-task limits of the tool loop and of generation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_steps: int = Field(default=6, ge=1, le=100, description="Model replies per task.")
    time_limit_s: float = Field(default=300.0, gt=0, description="Seconds per task.")
    command_timeout_s: float = Field(default=30.0, gt=0, description="Seconds per command.")
    max_output_bytes: int = Field(default=4096, ge=256, description="Tool output shown.")
    max_new_tokens: int = Field(default=192, ge=1, description="Tokens per model reply.")


class Generation(BaseModel):
    """Sampling: greedy and seeded by default, so two runs give the same per-task results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.0, ge=0, description="0 = greedy.")
    seed: int = Field(default=0, ge=0, description="Sampling seed (per position).")


class Gate(BaseModel):
    """The deployment gate: composite and per-category thresholds (percent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    composite: float = Field(default=50.0, ge=0, le=100, description="Composite threshold.")
    categories: dict[Category, float] = Field(
        default_factory=dict, description="Per-category thresholds (absent: no threshold)."
    )


class SuiteConfig(BaseModel):
    """``configs/eval/suite.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Suite name, recorded with every score.")
    tasks: list[str] = Field(min_length=1, description="Task files, relative to the suite file.")
    weights: dict[Category, float] = Field(
        description="Category weights of the composite (categories absent: weight 0)."
    )
    gate: Gate = Field(default_factory=Gate, description="Thresholds of `node0 eval --gate`.")
    limits: Limits = Field(default_factory=Limits, description="Loop and generation limits.")
    generation: Generation = Field(default_factory=Generation, description="Sampling.")
    tools: list[str] = Field(
        default=["bash", "read_file", "write_file"], description="Tools offered to the model."
    )
    system: str = Field(
        default="You are a {role} in the gastown rig of Gas Town. Work happens in the current "
        "directory; act with the tools, then answer briefly.",
        description="System message; {role} is the task's role.",
    )


class Suite(BaseModel):
    """A loaded suite: its config, where it came from, and its tasks in file order."""

    model_config = ConfigDict(frozen=True)

    config: SuiteConfig
    path: Path
    sha256: str
    tasks: list[Task]

    def select(
        self,
        ids: list[str] | None = None,
        category: str | None = None,
        limit: int | None = None,
    ) -> list[Task]:
        """The tasks to run: by ``ids`` (in that order), else by ``category``, then the first
        ``limit`` of them.

        Raises:
            ConfigError: an unknown id or category.
        """
        by_id = {t.id: t for t in self.tasks}
        if ids:
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                raise ConfigError(f"unknown task id(s) {unknown} in suite {self.config.name}")
            chosen = [by_id[i] for i in ids]
        else:
            chosen = list(self.tasks)
        if category is not None:
            if category not in CATEGORIES:
                raise ConfigError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
            chosen = [t for t in chosen if t.category == category]
        return chosen[:limit] if limit is not None else chosen


def one_per_category(tasks: list[Task], n: int = 1) -> list[Task]:
    """The first ``n`` tasks of each category, in category order (a short, balanced subset)."""
    return [t for c in CATEGORIES for t in [t for t in tasks if t.category == c][:n]]


def load_task_file(path: Path) -> list[Task]:
    """The tasks of one YAML (a list) or JSONL (one task per line) file.

    Raises:
        ConfigError: unreadable, malformed, or a task that does not validate (naming it).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read task file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".jsonl":
            items = [yaml.safe_load(line) for line in text.splitlines() if line.strip()]
        else:
            items = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML/JSON: {exc}") from exc
    if not isinstance(items, list):
        raise ConfigError(f"{path}: a task file is a list of tasks")
    tasks = []
    for n, item in enumerate(items, 1):
        try:
            tasks.append(Task.model_validate(item))
        except ValidationError as exc:
            name = item.get("id", f"#{n}") if isinstance(item, dict) else f"#{n}"
            raise ConfigError(f"{path}: task {name}: {exc}") from exc
    return tasks


def load_suite(path: str | Path | None = None) -> Suite:
    """The suite at ``path`` (default ``configs/eval/suite.yaml``) with all its tasks, each
    scorer's parameters checked.

    Raises:
        ConfigError: the suite or a task file is invalid, an id repeats, a fixture folder is
            missing, or a scorer's parameters are wrong.
    """
    from evaluation.scorers import check_spec

    path = Path(path) if path is not None else DEFAULT_SUITE
    config, sha256 = load_yaml_config(path, SuiteConfig)
    tasks: list[Task] = []
    for name in config.tasks:
        tasks += load_task_file(path.parent / name)
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise ConfigError(f"suite {config.name}: task id {task.id} appears twice")
        seen.add(task.id)
        if task.fixture.base and not (fixtures_dir(path) / task.fixture.base).is_dir():
            raise ConfigError(f"task {task.id}: no fixture folder {task.fixture.base}")
        try:
            check_spec(task.scorer)
        except ValueError as exc:
            raise ConfigError(f"task {task.id}: scorer: {exc}") from exc
    return Suite(config=config, path=path.resolve(), sha256=sha256, tasks=tasks)


def fixtures_dir(suite_path: Path) -> Path:
    """Where a suite's fixture folders are: ``fixtures/`` beside the suite file."""
    return Path(suite_path).resolve().parent / "fixtures"
