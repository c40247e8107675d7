"""The recording ``bd`` / ``gt`` shim of the eval sandbox (used when the real tool is absent).

The sandbox's ``bin/bd`` and ``bin/gt`` run ``python -m evaluation.shim TOOL ARGS…``. Each call
is parsed against the tool's documented grammar (:mod:`evaluation.grammar`) and appended to the
record file (``$NODE0_EVAL_RECORD``, JSON lines: ``tool``, ``argv``, ``cwd``, ``command``,
``args``, ``error``, ``exit_code``). A ``bd`` call that parses is applied to the rig's
``.beads/issues.jsonl`` (found upwards from the working directory, as bd finds its database)
and prints what bd prints; a ``gt`` call is only recorded (it acts on agents and mail outside
the sandbox) and acknowledged. A call that does not parse prints bd's/gt's kind of error and
exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from evaluation.beads_store import BeadsCommandError, apply
from evaluation.grammar import GrammarError, Invocation, parse

RECORD_ENV = "NODE0_EVAL_RECORD"


def _rig_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / ".beads").is_dir():
            return folder
    return None


def _record(call: Invocation, exit_code: int, error: str | None) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    entry = {"tool": call.tool, "argv": list(call.argv), "cwd": os.getcwd(),
             "command": call.command, "args": call.args, "error": error,
             "exit_code": exit_code}  # fmt: skip
    with open(path, "a") as handle:
        handle.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")


def run(tool: str, argv: list[str]) -> int:
    """One shimmed call: parse, record, apply (bd); returns the exit code."""
    call = parse(tool, argv)
    if not call.ok:
        _record(call, 1, call.error)
        print(f"Error: {call.error}\nRun '{tool} --help' for usage.", file=sys.stderr)
        return 1
    if tool == "gt":
        _record(call, 0, None)
        print(f"gt {call.command}: ok")
        return 0
    rig = _rig_root(Path.cwd())
    if rig is None:
        _record(call, 1, "no .beads database")
        print("Error: no beads database found (run in a rig with .beads/)", file=sys.stderr)
        return 1
    try:
        text = apply(rig, call)
    except (BeadsCommandError, GrammarError) as exc:
        _record(call, 1, str(exc))
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    _record(call, 0, None)
    sys.stdout.write(text)
    return 0


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m evaluation.shim bd|gt ARGS…", file=sys.stderr)
        return 2
    return run(sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
