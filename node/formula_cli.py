"""``node0 formula run NAME --var k=v … [--resume RUN_DIR]`` and ``node0 formula show NAME``.

See :mod:`node.formula_run` (phases, gates, evidence, the job bead) and docs/registry.md.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from base.errors import ConfigError


def _vars(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--var {item!r}: expected NAME=VALUE")
        if key in out:
            raise ConfigError(f"--var {key} given twice")
        out[key] = value
    return out


def _echo(line: str) -> None:
    print(line, flush=True)


def run_formula(args) -> int:
    from node import formula_sft_dpo
    from node.formula_run import announce, register_phases, resume, start
    from node.formula_spec import load_formula

    register_phases(formula_sft_dpo)

    def _terminate(signum, _frame):  # a phase's command group is stopped on the way out
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    spec = load_formula(args.formula)
    given = _vars(args.var)
    if args.resume is not None:
        flow = resume(spec, args.resume, given, echo=_echo)
    else:
        flow = start(spec, given, args.runs_dir, echo=_echo)
    announce(spec, flow)
    return flow.run()


def show_formula(args) -> int:
    from node.formula_spec import load_formula

    spec = load_formula(args.formula)
    if args.json:
        print(
            json.dumps(
                {
                    "formula": spec.name,
                    "version": spec.version,
                    "sha256": spec.sha256,
                    "vars": {n: v.__dict__ for n, v in spec.variables.items()},
                    "phases": [p.__dict__ for p in spec.phases],
                },
                indent=2,
                default=list,
            )
        )
        return 0
    print(f"{spec.name} v{spec.version}: {spec.description}\n  {spec.path}\nvariables:")
    for var in spec.variables.values():
        default = "required" if var.required else f"default {var.default!r}"
        extra = f" one of {', '.join(var.choices)}" if var.choices else ""
        print(f"  {var.name} ({var.type}, {default}){extra}: {var.description}")
    print("phases:")
    for phase in spec.phases:
        print(f"  {phase.id} [{phase.state}] needs {list(phase.needs) or '-'}: {phase.title}")
        print(f"    pre {list(phase.preconditions)} post {list(phase.postconditions)}")
        print(f"    $ {' '.join(phase.command)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "formula",
        help="run a training formula (phases with gates and evidence)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="formula_command", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run",
        help="run a formula (or resume one)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("formula", help="name in configs/formulas/ (train-role-model) or a path")
    run.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a formula variable (repeatable); see `node0 formula show NAME`",
    )
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a formula run directory: continue after its last passed phase",
    )
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
    run.set_defaults(handler=run_formula)
    show = sub.add_parser(
        "show",
        help="a formula's variables and phases",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    show.add_argument("formula", help="name in configs/formulas/ or a path")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.set_defaults(handler=show_formula)
