"""One eval run on plain arguments: select tasks, run each through the tool loop on the
model, score, and write the run directory (the engine under ``node0 eval`` and ``node0 demo``).

Run directory (``<runs>/eval-<stamp>-<hex>/``, :mod:`provenance.run_dir`)::

    run_record.json      inputs (suite and task files with sha256), resolved config, seeds,
                         versions, artifacts, the gate verdict
    config_resolved.yaml the resolved run config (suite, tasks, model, adapters, backend)
    scores.json          categories, composite, gate (see evaluation.report)
    tasks/<id>.json      per-task score, checks, stop reason, steps, calls, refusals
    transcripts/<id>.jsonl  per-task transcript: every tool call and its output
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.atomic import atomic_write
from evaluation.backends import EngineSessions, local_engine, swarm_engine
from evaluation.report import build_scores
from evaluation.runner import TaskResult, run_tasks
from evaluation.sandbox import namespace_available, tool_modes
from evaluation.task import Suite, Task
from inference.conversation import GenerationSettings
from inference.guardrails import load_guardrails
from provenance import create_run_dir


@dataclass
class EvalRun:
    """A finished run: its directory, scores and per-task results."""

    path: Path
    scores: dict[str, Any]
    results: list[TaskResult]
    wall_s: float


def run_eval(
    suite: Suite,
    tasks: list[Task],
    *,
    model: str,
    adapters: tuple[str, ...] = (),
    initial_peers: list[str] | None = None,
    hf_dir: Path | None = None,
    runs_dir: Path = Path("runs"),
    isolation: str = "auto",
    guardrails: Path | None = None,
    argv: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalRun:
    """Run ``tasks`` of ``suite`` on the model and write the run directory.

    Args:
        suite: the loaded suite (weights, gate, limits, generation).
        tasks: the tasks to run, in order.
        model: the model's name (catalog name or HF dir served by the swarm).
        adapters: task adapters to stack (swarm: names the daemons serve; ``hf_dir``: PEFT
            adapter directories).
        initial_peers: DHT multiaddrs of the swarm (ignored with ``hf_dir``).
        hf_dir: run in this process on this Hugging Face directory instead of the swarm.
        runs_dir: where the run directory goes.
        isolation: sandbox isolation (``auto``, ``namespace``, ``none``).
        guardrails: the guardrails policy file (None: the default).
        argv: recorded in the run record.
        progress: gets a line per task.

    Raises:
        Node0Error: the suite, guardrails or model cannot be loaded, or the run directory
            cannot be written; a task whose model fails mid-run is scored as failed instead.
    """
    policy, policy_path, policy_sha = load_guardrails(guardrails)
    cfg = suite.config
    backend = f"hf-dir:{hf_dir}" if hf_dir is not None else "swarm"
    sandbox = {"isolation": "namespace" if isolation != "none" and namespace_available()
               else "none", **tool_modes()}  # fmt: skip
    run = create_run_dir(
        runs_dir,
        "eval",
        config={
            "suite": cfg.model_dump(mode="json"),
            "tasks": [t.id for t in tasks],
            "model": model,
            "adapters": list(adapters),
            "backend": backend,
            "guardrails": {"path": str(policy_path), "sha256": policy_sha},
            "sandbox": sandbox,
        },  # fmt: skip
        config_path=suite.path,
        seeds={"sampling": cfg.generation.seed},
        argv=argv,
    )
    run.add_input(suite.path, role="suite")
    for name in cfg.tasks:
        run.add_input(suite.path.parent / name, role="tasks")
    run.add_input(policy_path, role="guardrails")
    settings = GenerationSettings.create(
        max_new_tokens=cfg.limits.max_new_tokens,
        temperature=cfg.generation.temperature,
        seed=cfg.generation.seed,
    )
    started = time.monotonic()
    client = None
    results: list[TaskResult] = []
    try:
        if hf_dir is not None:
            engine = local_engine(hf_dir, {Path(a).name: Path(a) for a in adapters})
            sessions = EngineSessions(engine, (), settings)
        else:
            engine, client = swarm_engine(model, initial_peers or [])
            sessions = EngineSessions(engine, tuple(adapters), settings)

        async def go() -> None:
            async for result in run_tasks(tasks, suite, sessions, engine.tool_format,
                                          guardrails=policy, out_dir=run.path,
                                          isolation=isolation, progress=progress):  # fmt: skip
                results.append(result)

        asyncio.run(go())
    except BaseException:
        run.finish("failed", tasks_done=len(results))
        raise
    finally:
        if client is not None:
            client.close()
    wall = round(time.monotonic() - started, 1)
    scores = build_scores(results, cfg, suite_sha256=suite.sha256, model=model,
                          adapters=[Path(a).name if hf_dir else a for a in adapters],
                          backend=backend, sandbox=sandbox)  # fmt: skip
    scores["wall_s"] = wall
    atomic_write(run.path / "scores.json", json.dumps(scores, indent=2).encode())
    run.add_artifact("scores.json")
    for sub in ("tasks", "transcripts"):
        for path in sorted((run.path / sub).glob("*")):
            run.add_artifact(path)
    run.finish("done", gate=scores["gate"], composite=scores["composite"], wall_s=wall)
    return EvalRun(run.path, scores, results, wall)
