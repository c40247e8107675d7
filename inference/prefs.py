"""Preference pairs from two model versions on the same bead (``node0 prefs``).

``sling`` gives one bead to two model versions; each works in its own branch and worktree of
the rig (:mod:`inference.prefs_branches`) through the tool loop (a
:data:`SessionRunner`), and the session (its transcript, the branch, the outcome) is recorded
in ``.node0/prefs/<bead>.json`` under the rig. ``pick`` records the verdict (a human's, the
rig's, or ``auto`` from the outcomes) and writes the two sessions as ``gastown.transcript/1``
records to ``transcripts/prefs/<bead>.jsonl``: the winner with outcome ``success``, the other
with ``failure`` and failure mode ``preference_<source>``. ``node0 corpus build`` reads
transcripts and pairs a failed session with the successful one on the same bead and role, so
the pair enters the corpus as a DPO pair with both sessions' provenance (file and line of each
record, session ids) and the verdict source in its failure mode. ``undo`` takes a pick back
until a corpus build has run after it.

Poisoning guard: a pick is quarantined (recorded with its reason, no transcript written) when
the two sessions ran on different task texts, or when the verdict contradicts the recorded
outcomes (the winner broke the checks the loser passed, or timed out where the loser answered).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from base.errors import Node0Error, RequestError
from gastown.beads import BEADS_FILE, read_beads
from gastown.rig import load_rig
from inference.prefs_branches import GitWorktrees, Worktree

log = logging.getLogger(__name__)

PREFS_DIR = ".node0/prefs"
TRANSCRIPTS_DIR = "transcripts/prefs"
SOURCES = ("human", "rig", "auto")


@dataclass(frozen=True)
class ModelSpec:
    """A model version: a base model (catalog name or directory) and adapters, written
    ``base+adapter+adapter``; or a registry version (``deacon-v2``, also ``deacon@v2``), which
    :func:`resolve_spec` turns into its base model and adapter (``version``, ``sha256`` keep
    where it came from)."""

    base: str
    adapters: tuple[str, ...] = ()
    version: str = ""
    """The registry version this spec was resolved from ("" for base+adapters)."""
    sha256: str = ""
    """The registered adapter's sha256 (with ``version``)."""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        parts = [p.strip() for p in text.split("+")]
        if not parts[0] or any(not p for p in parts):
            raise RequestError(f"model spec {text!r}: expected MODEL[+ADAPTER…]")
        return cls(parts[0], tuple(parts[1:]))

    def __str__(self) -> str:
        return self.version or "+".join([self.base, *self.adapters])

    def provenance(self) -> dict | None:
        """What a registry version resolved to (None: not a registry version)."""
        if not self.version:
            return None
        return {
            "version": self.version,
            "base_model": self.base,
            "adapter": self.adapters[0],
            "sha256": self.sha256,
        }


_AT_VERSION = re.compile(r"^(?P<name>[a-z][a-z0-9_-]*)@v(?P<version>[1-9][0-9]*)$")


def resolve_spec(text: str, registry_db: Path | None = None) -> ModelSpec:
    """``text`` as a :class:`ModelSpec`, a registry version resolved to its base and adapter.

    A name of the registry's form (``<role>-v<N>``, or ``<role>@v<N>``) that is neither a
    directory nor a catalog model must be a version the registry holds.

    Raises:
        RequestError: a malformed spec, or a version name the registry does not know (or no
            registry to look it up in), or a pruned version.
    """
    from models.catalog import CATALOG
    from registry.store import VERSION_ID, UnknownVersion, resolve_version

    text = text.strip()
    at = _AT_VERSION.match(text)
    name = f"{at['name']}-v{at['version']}" if at else text
    if not VERSION_ID.match(name) or name in CATALOG or Path(name).exists():
        return ModelSpec.parse(text)
    try:
        version, adapter, _ = resolve_version(name, registry_db)
    except UnknownVersion as exc:
        if exc.known is None:
            raise RequestError(
                f"model {text!r} names a registry version but there is no registry at {exc.db}",
                hint="set $NODE0_REGISTRY, or give MODEL[+ADAPTER…]",
            ) from exc
        raise RequestError(
            f"model {text!r}: the registry has no version {name}"
            + (exc.listing() or " (nor any of that name)"),
            hint="node0 model list",
        ) from exc
    return ModelSpec(version.base_model, (adapter.name,), version=version.id, sha256=adapter.sha256)


@dataclass
class SessionResult:
    """What a session runner reports: its transcript turns and how it ended."""

    turns: list[dict]
    stop_reason: str  # answer | max_steps | time_limit | error
    checks_passed: bool | None = None  # the rig's check command in the worktree (None: none)


SessionRunner = Callable[[ModelSpec, str, Worktree], Awaitable[SessionResult]]
"""Runs one session: the model version, the task text, the worktree it works in."""


def tool_loop_runner(
    model_for: Callable[[ModelSpec], object],
    fmt,
    *,
    system: str | None = None,
    check: str | None = None,
    check_timeout: float = 600.0,
    limits=None,
) -> SessionRunner:
    """A :data:`SessionRunner` that works the task through the agent tool loop
    (:class:`~inference.tool_agent.ToolAgent`, ``bash`` in the worktree), then runs ``check``
    (the rig's test command, e.g. ``go test ./...``) in the worktree for the outcome.

    ``model_for(spec)``: the tool-loop model (:data:`~inference.tool_loop.Model`) of a version.
    """
    from inference.tool_agent import ToolAgent
    from inference.tool_loop import DEFAULT_LIMITS
    from inference.tools import Toolbox
    from inference.transcript import SessionTranscript

    async def run(spec: ModelSpec, task: str, worktree: Worktree) -> SessionResult:
        transcript = SessionTranscript(rig="", role="polecat")
        agent = ToolAgent(
            model_for(spec),
            Toolbox(worktree.path, ("bash",)),
            fmt,
            system=system,
            limits=limits or DEFAULT_LIMITS,
            transcript=transcript,
        )
        try:
            stop = (await agent.ask(task)).stop_reason
        except Node0Error as exc:  # recorded as the session's outcome, not fatal to the sling
            log.warning("session of %s on %s ended in an error: %s", spec, worktree.branch, exc)
            stop = "error"
        passed = None
        if check:
            try:
                proc = await asyncio.to_thread(
                    subprocess.run,
                    ["bash", "-c", check],
                    cwd=worktree.path,
                    capture_output=True,
                    timeout=check_timeout,
                )
                passed = proc.returncode == 0
            except subprocess.TimeoutExpired:
                passed = False
        return SessionResult(list(transcript.turns), stop, passed)

    return run


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bead_task(rig: Path, bead_id: str) -> tuple[str, str]:
    """(task text, role) of the newest version of ``bead_id`` in the rig's bd export.

    Raises:
        RequestError: the bead is not in the export.
    """
    beads = [b for b in read_beads(rig, BEADS_FILE, rig=load_rig(rig).name).beads]
    found = [b for b in beads if b.id == bead_id]
    if not found:
        raise RequestError(f"bead {bead_id!r} is not in {rig / BEADS_FILE}")
    bead = max(found, key=lambda b: b.updated_at)
    description = str(bead.fields.get("description") or "").strip()
    text = f"Your hook has {bead.id}: {bead.title}" + (f"\n\n{description}" if description else "")
    return text, bead.assignee_role or "polecat"


class PrefsStore:
    """The rig's preference records, one JSON file per bead."""

    def __init__(self, rig: Path):
        self.rig = Path(rig).resolve()
        self.dir = self.rig / PREFS_DIR

    def path(self, bead_id: str) -> Path:
        return self.dir / f"{bead_id}.json"

    def load(self, bead_id: str) -> dict:
        path = self.path(bead_id)
        if not path.is_file():
            raise RequestError(
                f"no preference sessions for bead {bead_id!r} in {self.rig}",
                hint=f"run `node0 prefs sling {bead_id} --models A,B` first",
            )
        return json.loads(path.read_text())

    def save(self, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(record["bead_id"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path(record["bead_id"]))


async def sling(
    rig: Path,
    bead_id: str,
    models: list[ModelSpec],
    run_session: SessionRunner,
    *,
    branches: GitWorktrees | None = None,
) -> dict:
    """Run the bead on each model version in its own branch; returns the stored record."""
    if len(models) != 2 or models[0] == models[1]:
        raise RequestError(f"prefs sling takes two different model versions, got {models}")
    rig = Path(rig).resolve()
    task, role = bead_task(rig, bead_id)
    branches = branches or GitWorktrees(rig)
    sessions = {}
    for label, spec in zip(("A", "B"), models, strict=True):
        worktree = branches.open(bead_id, label)
        started = time.time()
        result = await run_session(spec, task, worktree)
        sessions[label] = {
            "model": str(spec),
            "registry": spec.provenance(),
            "session_id": f"prefs-{bead_id}-{label}-{int(started)}",
            "branch": worktree.branch,
            "base_commit": worktree.base,
            "head_commit": branches.head(worktree),
            "task": task,
            "task_sha256": _sha(task),
            "role": role,
            "turns": result.turns,
            "stop_reason": result.stop_reason,
            "checks_passed": result.checks_passed,
            "started_at": _iso(started),
            "ended_at": _iso(time.time()),
        }
        branches.close(bead_id, label)
    record = {"format": "node0-prefs/1", "bead_id": bead_id, "sessions": sessions, "pick": None}
    PrefsStore(rig).save(record)
    return record


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _label(record: dict, winner: str) -> str:
    sessions = record["sessions"]
    if winner in sessions:
        return winner
    named = [k for k, s in sessions.items() if s["model"] == winner]
    if len(named) != 1:
        raise RequestError(
            f"--winner {winner!r} is neither a session label nor one model of bead "
            f"{record['bead_id']}: "
            + ", ".join(f"{k} = {s['model']}" for k, s in sorted(sessions.items()))
        )
    return named[0]


def _succeeded(session: dict) -> bool:
    return session["stop_reason"] == "answer" and session["checks_passed"] is not False


def auto_winner(record: dict) -> str:
    """The winner from the outcomes: the one session that answered and passed its checks."""
    ok = [k for k, s in sorted(record["sessions"].items()) if _succeeded(s)]
    if len(ok) != 1:
        raise RequestError(
            f"no automatic verdict for bead {record['bead_id']}: "
            + ("both sessions succeeded" if ok else "neither session succeeded")
            + "; pick the winner with --winner"
        )
    return ok[0]


def poisoning(record: dict, winner: str) -> str | None:
    """Why the verdict must not become a pair (None: it may)."""
    sessions = record["sessions"]
    loser = next(k for k in sessions if k != winner)
    win, lose = sessions[winner], sessions[loser]
    if win["task_sha256"] != lose["task_sha256"]:
        return "the two sessions ran on different task texts"
    if win["checks_passed"] is False and lose["checks_passed"] is True:
        return f"the verdict contradicts the outcomes: {winner} broke the checks {loser} passed"
    if win["stop_reason"] != "answer" and lose["stop_reason"] == "answer":
        return (
            f"the verdict contradicts the outcomes: {winner} ended with "
            f"{win['stop_reason']} where {loser} answered"
        )
    return None


def transcripts_path(rig: Path, bead_id: str) -> Path:
    return Path(rig).resolve() / TRANSCRIPTS_DIR / f"{bead_id}.jsonl"


def pick(
    rig: Path, bead_id: str, winner: str | None, *, reason: str = "", source: str = "human"
) -> dict:
    """Record the verdict; write the pair's transcripts unless the guard quarantines it.

    Raises:
        RequestError: unknown bead, unknown winner, no automatic verdict, a pick already made.
    """
    if source not in SOURCES:
        raise RequestError(f"verdict source {source!r}: one of {', '.join(SOURCES)}")
    store = PrefsStore(rig)
    record = store.load(bead_id)
    if record["pick"] is not None:
        raise RequestError(
            f"bead {bead_id} already has a pick ({record['pick']['winner']}, "
            f"{record['pick']['status']})",
            hint=f"`node0 prefs undo {bead_id}` first",
        )
    label = auto_winner(record) if winner is None else _label(record, winner)
    if winner is None:
        source = "auto"
    why = poisoning(record, label)
    record["pick"] = {
        "winner": label,
        "reason": reason,
        "source": source,
        "at": time.time(),
        "status": "quarantined" if why else "picked",
        "quarantine_reason": why,
    }
    if why is None:
        _write_transcripts(Path(rig), record)
    store.save(record)
    return record


def _write_transcripts(rig: Path, record: dict) -> None:
    rig_name = load_rig(rig).name
    winner, source = record["pick"]["winner"], record["pick"]["source"]
    lines = []
    for label, s in sorted(record["sessions"].items()):
        won = label == winner
        lines.append(
            {
                "schema": "gastown.transcript/1",
                "session_id": s["session_id"],
                "rig": rig_name,
                "role": s["role"],
                "agent": s["model"],
                "bead_id": record["bead_id"],
                "task": None,
                "outcome": "success" if won else "failure",
                "failure_mode": None if won else f"preference_{source}",
                "started_at": s["started_at"],
                "ended_at": s["ended_at"],
                "turns": s["turns"],
            }
        )
    path = transcripts_path(rig, record["bead_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))


def undo(rig: Path, bead_id: str, *, corpus_runs: Path | None = None) -> dict:
    """Take the pick back (and its transcripts) while no corpus build has run since it.

    Raises:
        RequestError: unknown bead, no pick, or a build under ``corpus_runs`` after the pick.
    """
    store = PrefsStore(rig)
    record = store.load(bead_id)
    chosen = record["pick"]
    if chosen is None:
        raise RequestError(f"bead {bead_id} has no pick to undo")
    if corpus_runs is not None and Path(corpus_runs).is_dir():
        later = [
            d.name
            for d in Path(corpus_runs).glob("corpus-*")
            if (d / "run_record.json").is_file()
            and (d / "run_record.json").stat().st_mtime > chosen["at"]
        ]
        if later:
            raise RequestError(
                f"the pick of bead {bead_id} was read by corpus build {sorted(later)[-1]}; "
                "it can no longer be undone"
            )
    transcripts_path(rig, bead_id).unlink(missing_ok=True)
    record["pick"] = None
    store.save(record)
    return record


__all__ = [
    "ModelSpec",
    "PrefsStore",
    "SessionResult",
    "SessionRunner",
    "auto_winner",
    "bead_task",
    "pick",
    "poisoning",
    "resolve_spec",
    "sling",
    "tool_loop_runner",
    "undo",
]
