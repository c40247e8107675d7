"""``node0 eval``: score a model on the agent eval suite, gate it, compare two runs.

    node0 eval [--suite FILE] [--tasks ID,…|--category C|--limit N|--per-category N] [--gate]
               [--model M] [--initial-peers MADDR…] [--adapters a,b] [--hf-dir DIR] …
    node0 eval compare RUN_A RUN_B [--alpha 0.05] [--json]

This module is the front end (flags to plain arguments); the run is
:func:`evaluation.evaluate.run_eval`, the comparison :func:`evaluation.compare.compare_runs`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from base.errors import QualityGateError
from inference.swarm_args import add_swarm_arguments, swarm_peers


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model on the agent eval suite (and gate it); `eval compare A B`",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_swarm_arguments(p)
    p.add_argument(
        "--suite", type=Path, default=None, help="suite file (default configs/eval/suite.yaml)"
    )
    p.add_argument("--tasks", default=None, help="comma-separated task ids to run")
    p.add_argument("--category", default=None, help="only this category's tasks")
    p.add_argument("--limit", type=int, default=None, help="only the first N selected tasks")
    p.add_argument(
        "--per-category", type=int, default=None, help="only the first N tasks of each category"
    )
    p.add_argument(
        "--adapters",
        default="",
        help="task adapters to stack (swarm: names; --hf-dir: PEFT directories)",
    )
    p.add_argument(
        "--hf-dir",
        type=Path,
        default=None,
        help="run in this process on a Hugging Face directory (e.g. a gathered "
        "export) instead of the swarm",
    )
    p.add_argument(
        "--gate",
        action="store_true",
        help="exit 9 when the composite or a category is below its threshold",
    )
    p.add_argument(
        "--isolation",
        choices=["auto", "namespace", "none"],
        default="auto",
        help="sandbox isolation: mount+network namespace where available",
    )
    p.add_argument(
        "--guardrails",
        type=Path,
        default=None,
        help="guardrails policy (default configs/guardrails/default.yaml)",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
    p.add_argument("--json", action="store_true", help="print scores.json on stdout at the end")
    p.set_defaults(handler=_run)
    sub = p.add_subparsers(dest="eval_command", metavar="{compare}")
    c = sub.add_parser(
        "compare",
        help="paired comparison of two eval runs (exact McNemar)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("run_a", type=Path, help="baseline run directory")
    c.add_argument("run_b", type=Path, help="candidate run directory")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(handler=_compare)


def _run(args: argparse.Namespace) -> int:
    ids = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    adapters = tuple(a.strip() for a in args.adapters.split(",") if a.strip())
    peers = None if args.hf_dir is not None else swarm_peers(args)
    return evaluate(
        suite_path=args.suite,
        task_ids=ids,
        category=args.category,
        limit=args.limit,
        per_category=args.per_category,
        model=args.model,
        adapters=adapters,
        initial_peers=peers,
        hf_dir=args.hf_dir,
        runs_dir=args.runs_dir,
        isolation=args.isolation,
        guardrails=args.guardrails,
        gate=args.gate,
        as_json=args.json,
        argv=sys.argv,
    )


def evaluate(
    *,
    suite_path: Path | None,
    task_ids: list[str] | None,
    category: str | None,
    limit: int | None,
    per_category: int | None,
    model: str,
    adapters: tuple[str, ...],
    initial_peers: list[str] | None,
    hf_dir: Path | None,
    runs_dir: Path,
    isolation: str = "auto",
    guardrails: Path | None = None,
    gate: bool = False,
    as_json: bool = False,
    argv: list[str] | None = None,
) -> int:
    """Run the eval and print the verdict; with ``gate``, raise QualityGateError (exit 9)
    when it fails."""
    from base.banner import print_banner, status
    from evaluation.evaluate import run_eval
    from evaluation.report import gate_lines
    from evaluation.sandbox import namespace_available, tool_modes
    from evaluation.task import load_suite, one_per_category

    suite = load_suite(suite_path)
    tasks = suite.select(task_ids, category, None)
    if per_category is not None:
        tasks = one_per_category(tasks, per_category)
    tasks = tasks[:limit] if limit is not None else tasks
    cfg = suite.config
    modes = tool_modes()
    iso = "namespace" if isolation != "none" and namespace_available() else "none"
    print_banner(
        "eval",
        suite.path,
        suite.sha256,
        [
            f"suite: {cfg.name}, {len(tasks)} of {len(suite.tasks)} tasks",
            f"model: {model}"
            + (f", adapters {','.join(adapters)}" if adapters else "")
            + (f" (in this process on {hf_dir})" if hf_dir else " (through the swarm)"),
            f"generation: temperature {cfg.generation.temperature:g}, seed {cfg.generation.seed}, "
            f"{cfg.limits.max_new_tokens} tokens per reply",
            f"limits: {cfg.limits.max_steps} steps, {cfg.limits.time_limit_s:g} s per task, "
            f"{cfg.limits.command_timeout_s:g} s per command",
            f"sandbox: isolation {iso}; bd {modes['bd']}, gt {modes['gt']}",
            f"gate: composite >= {cfg.gate.composite:g}"
            + "".join(f", {k} >= {v:g}" for k, v in cfg.gate.categories.items()),
        ],
    )
    result = run_eval(
        suite,
        tasks,
        model=model,
        adapters=adapters,
        initial_peers=initial_peers,
        hf_dir=hf_dir,
        runs_dir=runs_dir,
        isolation=isolation,
        guardrails=guardrails,
        argv=argv,
        progress=lambda line: status("eval", line),
    )
    for line in gate_lines(result.scores):
        print(line)
    print(f"run directory: {result.path} (wall {result.wall_s:.0f} s)")
    if as_json:
        print(json.dumps({**result.scores, "run_dir": str(result.path)}))
    verdict = result.scores["gate"]
    if gate and not verdict["passed"]:
        failed = list(verdict["failed_categories"])
        if not verdict["composite_passed"]:
            failed.append(
                f"composite {result.scores['composite']:g} < {verdict['composite_threshold']:g}"
            )
        raise QualityGateError(f"quality gate failed: {', '.join(failed)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    return compare(args.run_a, args.run_b, alpha=args.alpha, as_json=args.json)


def compare(run_a: Path, run_b: Path, *, alpha: float = 0.05, as_json: bool = False) -> int:
    """Print the paired comparison of two eval runs."""
    from evaluation.compare import compare_lines, compare_runs

    result = compare_runs(run_a, run_b, alpha=alpha)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for line in compare_lines(result):
            print(line)
    return 0
