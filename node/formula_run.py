"""``node0 formula run``: a formula's phases, each behind a gate, with evidence (seed 002).

A run directory (``runs/formula-…``) holds ``flow.json`` (formula sha256, resolved variables,
the job bead), one directory per phase attempt, and per phase ``phase.<id>.json``: its inputs,
the config fingerprint (formula sha256 + variables sha256), each pre- and postcondition with
its verdict, the commands with their exit codes, the outcome, the outputs and the artifacts
with sha256. A phase starts only when every phase it ``needs`` has evidence with outcome
``passed`` (and the evidence's artifacts still hash as recorded); the flow stops on the first
failure with that phase's exit code, and ``flow.summary.json`` names it. No implicit retries:
``--resume RUN_DIR`` continues after the last passed phase (a failed phase runs again in a
new attempt directory; nothing is overwritten).

The job is a bead in the rig's tracker (:class:`registry.job_bead.JobBead`): its state is the
running phase's ``state``; during training, the trainer's ``state.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from base.banner import status
from base.errors import ConfigError, DataError, ExitCode, Node0Error, RunDirError
from base.hashing import canonical_json, sha256_file, sha256_json
from node.formula_spec import FormulaSpec, Phase
from provenance import atomic_write, create_run_dir
from registry.job_bead import JobBead, state_from_trainer

POLL_S = 1.0


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class PhaseFailed(Node0Error):
    """A phase failed; ``exit_code`` is the failing command's or the check's family."""

    def __init__(self, message: str, code: int, reason: str):
        super().__init__(message)
        self.exit_code = code  # type: ignore[assignment]
        self.reason = reason


@dataclass
class Context:
    """What a phase's checks and hooks see."""

    run_dir: Path
    vars: dict[str, Any]
    outputs: dict[str, dict[str, Any]]  # phase id -> its recorded outputs
    bead: JobBead
    phase_dir: Path = Path()
    current: dict[str, Any] = field(default_factory=dict)  # this phase's outputs so far

    def value(self, key: str) -> Any:
        if key == "phase_dir":
            return str(self.phase_dir)
        if "." in key:
            phase, name = key.split(".", 1)
            return self.outputs.get(phase, {}).get(name, self.current.get(name))
        return self.vars.get(key, self.current.get(key))


def _expand(template: tuple[str, ...], ctx: Context) -> list[str]:
    """Fill ``{…}`` placeholders; a list value given as a whole argument expands in place."""
    out: list[str] = []
    for arg in template:
        if arg.startswith("{") and arg.endswith("}") and arg.count("{") == 1:
            value = ctx.value(arg[1:-1])
            if isinstance(value, list):
                out += [str(v) for v in value]
                continue
            if value is None:
                raise ConfigError(f"command placeholder {arg} has no value")
            out.append(str(value))
            continue
        text = arg
        while "{" in text:
            start, end = text.index("{"), text.index("}")
            value = ctx.value(text[start + 1 : end])
            if value is None:
                raise ConfigError(f"command placeholder {text[start : end + 1]} has no value")
            text = text[:start] + str(value) + text[end + 1 :]
        out.append(text)
    return out


def _argv(args: list[str]) -> list[str]:
    """``node0 …`` runs as this interpreter's ``python -m node.cli …`` (the same checkout)."""
    return [sys.executable, "-m", "node.cli", *args[1:]] if args and args[0] == "node0" else args


def _new_runs(directory: Path, kind: str, before: set[Path]) -> list[Path]:
    return sorted(p for p in directory.glob(f"{kind}-*") if p.is_dir() and p not in before)


class FormulaRun:
    """One run of a formula (new or resumed)."""

    def __init__(self, spec: FormulaSpec, run_dir: Path, values: dict, bead: JobBead, *, echo):
        self.spec = spec
        self.run_dir = run_dir
        self.vars = values
        self.bead = bead
        self.echo = echo
        self.fingerprint = {"formula_sha256": spec.sha256, "vars_sha256": sha256_json(values)}

    # -- evidence ------------------------------------------------------------------------
    def evidence_path(self, phase: Phase) -> Path:
        return self.run_dir / f"phase.{phase.id}.json"

    def evidence(self, phase_id: str) -> dict | None:
        path = self.run_dir / f"phase.{phase_id}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def passed(self, phase_id: str) -> bool:
        """Evidence of ``phase_id`` with outcome passed, whose artifacts still hash as recorded."""
        found = self.evidence(phase_id)
        if not found or found.get("outcome") != "passed":
            return False
        if found.get("fingerprint") != self.fingerprint:
            return False
        for artifact in found.get("artifacts", []):
            path = Path(artifact["path"])
            if not path.is_file() or sha256_file(path) != artifact["sha256"]:
                return False
        return True

    def _write_evidence(self, phase: Phase, record: dict) -> None:
        atomic_write(self.evidence_path(phase), canonical_json(record))

    # -- running -------------------------------------------------------------------------
    def run(self) -> int:
        outputs: dict[str, dict] = {}
        for phase in self.spec.phases:
            if self.passed(phase.id):
                outputs[phase.id] = self.evidence(phase.id)["outputs"]
                self.echo(f"PHASE={phase.id} STATUS=skip (passed before)")
                continue
            missing = [n for n in phase.needs if not self.passed(n)]
            if missing:  # cannot happen in order, but a gate never assumes
                return self._stop(
                    phase,
                    None,
                    PhaseFailed(
                        f"phase {phase.id} needs {missing} passed",
                        ExitCode.CONFIG,
                        "needs_not_passed",
                    ),
                )
            ctx = Context(self.run_dir, self.vars, outputs, self.bead)
            try:
                record = self._run_phase(phase, ctx)
            except PhaseFailed as exc:
                return self._stop(phase, ctx, exc)
            outputs[phase.id] = record["outputs"]
        scores = outputs.get("eval", {})
        version = outputs.get("export", {}).get("version")
        self.bead.finish(
            version=version,
            composite=scores.get("composite"),
            categories=scores.get("categories"),
            run_dir=str(self.run_dir),
        )
        self._summary("passed", None, 0, outputs)
        self.echo(
            f"formula {self.spec.name}: done; bead {self.bead.id} {self.bead.status}"
            + (f", registered {version}" if version else "")
        )
        return 0

    def _attempt_dir(self, phase: Phase) -> tuple[Path, int]:
        attempt = 1
        while (self.run_dir / f"{phase.id}.{attempt}").exists():
            attempt += 1
        path = self.run_dir / f"{phase.id}.{attempt}"
        path.mkdir()
        return path, attempt

    def _check(self, names, ctx: Context, when: str) -> list[dict]:
        results = []
        for name in names:
            check = CHECKS.get(name)
            if check is None:
                raise PhaseFailed(f"unknown check {name!r}", ExitCode.CONFIG, "unknown_check")
            ok, detail = check(ctx)
            results.append({"check": name, "ok": ok, "detail": detail})
            if not ok:
                code = ExitCode.QUALITY_GATE if name.startswith("gate") else ExitCode.DATA
                exc = PhaseFailed(f"{when} {name} failed: {detail}", code, name)
                exc.checks = results
                raise exc
        return results

    def _run_phase(self, phase: Phase, ctx: Context) -> dict:
        phase_dir, attempt = self._attempt_dir(phase)
        ctx.phase_dir = phase_dir
        record: dict[str, Any] = {
            "phase": phase.id,
            "attempt": attempt,
            "started_at": _now(),
            "fingerprint": self.fingerprint,
            "declared": {
                "preconditions": list(phase.preconditions),
                "postconditions": list(phase.postconditions),
                "artifacts": list(phase.artifacts),
            },
            "inputs": {n: self.evidence(n).get("outputs") for n in phase.needs},
            "preconditions": [],
            "postconditions": [],
            "commands": [],
            "outputs": {},
            "artifacts": [],
            "outcome": "running",
        }
        self._write_evidence(phase, record)
        if phase.state:
            self.bead.set(phase.state)
        self.echo(f"PHASE={phase.id} STATUS=start ({phase.title}) DIR={phase_dir}")
        try:
            try:
                record["preconditions"] = self._check(phase.preconditions, ctx, "precondition")
            except PhaseFailed as exc:
                record["preconditions"] = getattr(exc, "checks", [])
                raise
            BEFORE.get(phase.id, lambda c: None)(ctx)
            if phase.command:
                try:
                    record["commands"].append(
                        self._command(phase, _expand(phase.command, ctx), ctx)
                    )
                except PhaseFailed as exc:
                    record["commands"].append(getattr(exc, "command", {}))
                    ON_FAIL.get(phase.id, lambda c: None)(ctx)  # e.g. the scores of a failed gate
                    raise
            AFTER.get(phase.id, lambda c, r: None)(ctx, record)
            try:
                record["postconditions"] = self._check(phase.postconditions, ctx, "postcondition")
            except PhaseFailed as exc:
                record["postconditions"] = getattr(exc, "checks", [])
                raise
        except PhaseFailed as exc:
            record.update(
                outcome="failed",
                exit_code=int(exc.exit_code),
                reason=exc.reason,
                error=str(exc),
                outputs=ctx.current,
                ended_at=_now(),
            )
            record["artifacts"] = _artifacts(ctx.current)
            self._write_evidence(phase, record)
            raise
        record.update(
            outcome="passed",
            outputs=ctx.current,
            ended_at=_now(),
            artifacts=_artifacts(ctx.current),
        )
        self._write_evidence(phase, record)
        self.echo(f"PHASE={phase.id} STATUS=ok CODE=0 ARTIFACT={self.evidence_path(phase)}")
        return record

    def _command(self, phase: Phase, args: list[str], ctx: Context) -> dict:
        log_path = ctx.phase_dir / "command.log"
        self.echo(f"  $ {' '.join(args)}")
        started = time.monotonic()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                _argv(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                while proc.poll() is None:
                    WATCH.get(phase.id, lambda c: None)(ctx)
                    time.sleep(POLL_S)
            except BaseException:
                os.killpg(proc.pid, 15)
                proc.wait()
                raise
        WATCH.get(phase.id, lambda c: None)(ctx)
        entry = {
            "argv": args,
            "rc": proc.returncode,
            "seconds": round(time.monotonic() - started, 1),
            "log": str(log_path),
        }
        ctx.current.setdefault("logs", []).append(str(log_path))
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            exc = PhaseFailed(
                f"`{' '.join(args[:3])} …` exited {proc.returncode}: " + " | ".join(tail),
                proc.returncode,
                "command_failed",
            )
            exc.command = entry
            raise exc
        return entry

    def _stop(self, phase: Phase, ctx: Context | None, exc: PhaseFailed) -> int:
        self.bead.set(
            "failed",
            failed_phase=phase.id,
            reason=str(exc).split("\n")[0],
            exit_code=int(exc.exit_code),
            **(
                {"scores": ctx.current.get("categories"), "composite": ctx.current.get("composite")}
                if ctx and "composite" in ctx.current
                else {}
            ),
        )
        self._summary("failed", phase.id, int(exc.exit_code), None, error=str(exc))
        self.echo(
            f"PHASE={phase.id} STATUS=fail CODE={int(exc.exit_code)} "
            f"ARTIFACT={self.evidence_path(phase)}"
        )
        print(f"node0 formula: phase {phase.id} failed: {exc}", file=sys.stderr)
        print(
            f"  resume after fixing: node0 formula run {self.spec.name} --resume {self.run_dir}",
            file=sys.stderr,
        )
        return int(exc.exit_code)

    def _summary(self, verdict, failed_phase, code, outputs, **extra) -> None:
        atomic_write(
            self.run_dir / "flow.summary.json",
            canonical_json(
                {
                    "formula": self.spec.name,
                    "verdict": verdict,
                    "first_failure": {"phase": failed_phase, "code": code}
                    if failed_phase
                    else None,
                    "bead": {"id": self.bead.id, "status": self.bead.status},
                    "phases": {
                        p.id: (self.evidence(p.id) or {}).get("outcome", "not run")
                        for p in self.spec.phases
                    },
                    "outputs": outputs,
                    "ended_at": _now(),
                    **extra,
                }
            ),
        )


def _artifacts(outputs: dict) -> list[dict]:
    files = []
    for key in sorted(outputs):
        if not key.endswith("_file"):
            continue
        path = Path(outputs[key])
        if path.is_file():
            files.append(
                {
                    "name": key,
                    "path": str(path),
                    "sha256": sha256_file(path),
                    "size": path.stat().st_size,
                }
            )
    return files


# -- the train-role-model phases: checks and hooks ----------------------------------------

Check = Callable[[Context], tuple[bool, str]]


def _rig_exists(ctx: Context) -> tuple[bool, str]:
    rig = Path(ctx.vars["rig"])
    return rig.is_dir(), str(rig)


def _corpus_built(ctx: Context) -> tuple[bool, str]:
    manifest = ctx.current.get("manifest_file")
    return bool(manifest and Path(manifest).is_file()), str(manifest)


def _role_partition(ctx: Context) -> tuple[bool, str]:
    count = ctx.current.get("role_examples", 0)
    need = ctx.vars["min_examples"]
    return count >= need, f"{count} SFT example(s) for {ctx.vars['role']} (with 'all'), need {need}"


def _corpus_dir_exists(ctx: Context) -> tuple[bool, str]:
    path = ctx.outputs["prepare"].get("corpus_dir")
    return bool(path and Path(path).is_dir()), str(path)


def _trainer_done(ctx: Context) -> tuple[bool, str]:
    run = ctx.current.get("train_run_dir")
    if not run:
        return False, "no training run directory"
    state = json.loads((Path(run) / "state.json").read_text()).get("state")
    return state == "done", f"trainer state {state}"


def _adapter_trained(ctx: Context) -> tuple[bool, str]:
    return bool(ctx.outputs["train"].get("adapter")), str(ctx.outputs["train"].get("adapter"))


def _scores_written(ctx: Context) -> tuple[bool, str]:
    path = ctx.current.get("scores_file")
    return bool(path and Path(path).is_file()), str(path)


def _gate_passed(ctx: Context) -> tuple[bool, str]:
    gate = ctx.current.get("gate", {})
    return gate.get(
        "passed"
    ) is True, f"composite {ctx.current.get('composite')}, failed {gate.get('failed_categories')}"


def _gate_passed_before(ctx: Context) -> tuple[bool, str]:
    gate = ctx.outputs["eval"].get("gate", {})
    return gate.get("passed") is True, "eval gate " + (
        "passed" if gate.get("passed") else "not passed"
    )


def _version_registered(ctx: Context) -> tuple[bool, str]:
    return bool(ctx.current.get("version")), str(ctx.current.get("version"))


CHECKS: dict[str, Check] = {
    "rig_exists": _rig_exists,
    "corpus_built": _corpus_built,
    "role_partition": _role_partition,
    "corpus_dir_exists": _corpus_dir_exists,
    "trainer_done": _trainer_done,
    "adapter_trained": _adapter_trained,
    "scores_written": _scores_written,
    "gate_passed": _gate_passed,
    "gate_passed_before": _gate_passed_before,
    "version_registered": _version_registered,
}


def _peers_args(ctx: Context) -> list[str]:
    peers = ctx.vars.get("initial_peers", "").split()
    return ["--initial-peers", *peers] if peers else []


def _after_prepare(ctx: Context, record: dict) -> None:
    runs = _new_runs(ctx.phase_dir, "corpus", set())
    if not runs:
        raise PhaseFailed("corpus build left no run directory", ExitCode.DATA, "no_output")
    corpus = runs[-1]
    manifest = json.loads((corpus / "manifest.json").read_text())
    by_role = manifest.get("counts", {}).get("sft", {}).get("by_role", {})
    ctx.current.update(
        corpus_dir=str(corpus),
        manifest_file=str(corpus / "manifest.json"),
        manifest_sha256=sha256_file(corpus / "manifest.json"),
        role_examples=int(by_role.get(ctx.vars["role"], 0)) + int(by_role.get("all", 0)),
        dpo_pairs=int(
            manifest.get("counts", {}).get("dpo", {}).get("by_role", {}).get(ctx.vars["role"], 0)
        ),
    )


def _before_train(ctx: Context) -> None:
    base = yaml.safe_load(Path(ctx.vars["train_config"]).read_text()) or {}
    adapter = f"job-{ctx.bead.id}".lower()
    rank = ctx.vars["lora_rank"]
    config = dict(base)
    config.update(model=ctx.vars["model"], adapter=adapter, steps=ctx.vars["steps"])
    config["lora"] = {**(base.get("lora") or {}), "rank": rank, "alpha": 2 * rank}
    config.pop("probes", None)
    data = dict(base.get("data") or {})
    data.update(
        train=[ctx.outputs["prepare"]["corpus_dir"]], heldout=[], roles=[ctx.vars["role"], "all"]
    )
    config["data"] = data
    if config.get("checkpoint_every"):
        config["checkpoint_every"] = min(config["checkpoint_every"], ctx.vars["steps"])
    path = ctx.phase_dir / "train.yaml"
    atomic_write(path, yaml.safe_dump(config, sort_keys=True))
    ctx.current.update(adapter=adapter, config_file=str(path))
    ctx.vars = {**ctx.vars, "peers_args": _peers_args(ctx)}


def _watch_train(ctx: Context) -> None:
    """Mirror the trainer's state.json into the bead as it changes."""
    runs = _new_runs(ctx.phase_dir, "train", set())
    if not runs:
        return
    ctx.current["train_run_dir"] = str(runs[-1])
    state = state_from_trainer(runs[-1])
    if state is not None and state != ctx.bead.status:
        ctx.bead.set(state)


def _after_train(ctx: Context, record: dict) -> None:
    _watch_train(ctx)
    run = ctx.current.get("train_run_dir")
    if run:
        ctx.current["run_record_file"] = str(Path(run) / "run_record.json")
        ctx.current["degraded"] = ctx.bead.was_degraded


def _before_eval(ctx: Context) -> None:
    args = []
    if ctx.vars.get("eval_limit"):
        args += ["--limit", str(ctx.vars["eval_limit"])]
    if ctx.vars.get("eval_tasks"):
        args += ["--tasks", ctx.vars["eval_tasks"]]
    ctx.vars = {**ctx.vars, "eval_args": args, "peers_args": _peers_args(ctx)}


def _read_eval(ctx: Context) -> None:
    from registry.scores import read_scores

    runs = sorted(p.parent for p in ctx.phase_dir.rglob("scores.json"))
    if not runs:
        return
    scores = read_scores(runs[-1])
    ctx.current.update(
        eval_run_dir=str(runs[-1]),
        scores_file=str(runs[-1] / "scores.json"),
        composite=scores["composite"],
        categories={k: v["score"] for k, v in scores["categories"].items()},
        gate=scores["gate"],
    )


def _after_eval(ctx: Context, record: dict) -> None:
    _read_eval(ctx)


def _before_export(ctx: Context) -> None:
    ctx.vars = {**ctx.vars, "peers_args": _peers_args(ctx)}


def record_gather(ctx: Context) -> Path | None:
    """After a gather phase: its run directory and the adapter file it wrote (None: no
    adapter) into the phase's outputs."""
    runs = _new_runs(ctx.phase_dir, "gather", set())
    if not runs:
        raise PhaseFailed("gather left no run directory", ExitCode.CHECKPOINT, "no_output")
    ctx.current["gather_run_dir"] = str(runs[-1])
    weights = sorted(ctx.phase_dir.glob("gathered/**/adapter_model.safetensors"))
    if not weights:
        return None
    ctx.current["adapter_file"] = str(weights[0])
    return weights[0]


def _after_export(ctx: Context, record: dict) -> None:
    record_gather(ctx)
    prepare, train, evaluation = ctx.outputs["prepare"], ctx.outputs["train"], ctx.outputs["eval"]
    args = [
        "node0",
        "model",
        "register",
        "--json",
        "--role",
        ctx.vars["role"],
        "--base-model",
        ctx.vars["model"],
        "--gather-run",
        ctx.current["gather_run_dir"],
        "--train-run",
        train["train_run_dir"],
        "--eval-run",
        evaluation["eval_run_dir"],
        "--corpus-manifest",
        prepare["manifest_file"],
        "--rig",
        ctx.vars["rig"],
        "--dpo-pairs",
        str(prepare.get("dpo_pairs", 0)),
        "--runs-dir",
        str(ctx.phase_dir),
        "--reason",
        f"formula train-role-model, bead {ctx.bead.id}",
    ]
    record["commands"].append(_run_register(ctx, args))


def _run_register(ctx: Context, args: list[str]) -> dict:
    started = time.monotonic()
    proc = subprocess.run(_argv(args), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    (ctx.phase_dir / "register.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise PhaseFailed(
            f"model register exited {proc.returncode}: {proc.stderr.strip()[-300:]}",
            proc.returncode,
            "command_failed",
        )
    out = json.loads(proc.stdout)
    ctx.current.update(
        version=out["id"], sha256=out["adapters"][0]["sha256"], register_run_dir=out["run_dir"]
    )
    return {"argv": args, "rc": 0, "seconds": round(time.monotonic() - started, 1)}


BEFORE: dict[str, Callable[[Context], None]] = {
    "train": _before_train,
    "eval": _before_eval,
    "export": _before_export,
}
AFTER: dict[str, Callable[[Context, dict], None]] = {
    "prepare": _after_prepare,
    "train": _after_train,
    "eval": _after_eval,
    "export": _after_export,
}
WATCH: dict[str, Callable[[Context], None]] = {"train": _watch_train}
ON_FAIL: dict[str, Callable[[Context], None]] = {"train": _watch_train, "eval": _read_eval}


def register_phases(module) -> None:
    """Add another formula's checks and hooks (e.g. :mod:`node.formula_sft_dpo`: its ``CHECKS``,
    ``BEFORE``, ``AFTER``, ``WATCH``, ``ON_FAIL``) to the runner's tables, keyed by phase id."""
    for table, name in (
        (CHECKS, "CHECKS"),
        (BEFORE, "BEFORE"),
        (AFTER, "AFTER"),
        (WATCH, "WATCH"),
        (ON_FAIL, "ON_FAIL"),
    ):
        for key, hook in getattr(module, name, {}).items():
            if table.get(key, hook) is not hook:
                raise ConfigError(f"{module.__name__}: {name}[{key!r}] is taken by another formula")
            table[key] = hook


# -- starting and resuming ----------------------------------------------------------------


def start(spec: FormulaSpec, given: dict[str, str], runs_dir: Path, *, echo) -> FormulaRun:
    from gastown.rig import load_rig

    values = spec.resolve(given)
    run = create_run_dir(
        runs_dir, "formula", config={"formula": spec.name, "vars": values}, config_path=spec.path
    )
    rig_root = Path(values.get("rig", "."))
    prefix = load_rig(rig_root).bead_prefix if rig_root.is_dir() else "node0"
    bead = JobBead.create(
        rig_root,
        prefix=prefix,
        title=f"Train {values.get('role', spec.name)} model (formula {spec.name})",
        depends_on=[values["corpus_bead"]] if values.get("corpus_bead") else [],
    )
    flow = {
        "formula": spec.name,
        "formula_sha256": spec.sha256,
        "formula_path": str(spec.path),
        "vars": values,
        "bead": bead.id,
        "rig": str(rig_root),
        "run_dir": str(run.path),
    }
    atomic_write(run.path / "flow.json", canonical_json(flow))
    run.set("bead", bead.id)
    return FormulaRun(spec, run.path, values, bead, echo=echo)


def resume(spec: FormulaSpec, run_dir: Path, given: dict[str, str], *, echo) -> FormulaRun:
    try:
        flow = json.loads((run_dir / "flow.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot resume {run_dir}: no readable flow.json ({exc})") from exc
    if flow["formula_sha256"] != spec.sha256:
        raise ConfigError(
            f"{spec.path} changed since {run_dir} started (sha256 {spec.sha256[:12]}… vs "
            f"{flow['formula_sha256'][:12]}…); start a new run"
        )
    if given:
        raise ConfigError("--resume takes the run's variables; give no --var")
    try:
        bead = JobBead.load(flow["rig"], flow["bead"])
    except DataError as exc:
        raise DataError(f"cannot resume: {exc}") from exc
    return FormulaRun(spec, run_dir, flow["vars"], bead, echo=echo)


def announce(spec: FormulaSpec, flow: FormulaRun) -> None:
    status("formula", f"{spec.name} v{spec.version} ({spec.path}, sha256 {spec.sha256[:16]}…)")
    status("vars", json.dumps(flow.vars, sort_keys=True))
    status("run", f"{flow.run_dir}; job bead {flow.bead.id} ({flow.bead.status})")
