"""`node0`: one entry point that dispatches to the subcommands of each package.

Each command module exposes ``register(subparsers)``: it adds its parser(s) and sets
``handler=callable(args) -> int``. Modules are imported lazily per command so that, for example,
``node0 corpus build`` does not pay for importing torch and hivemind.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from base import openmp_spin
from base.errors import ExitCode, Node0Error

# command name -> module that registers it (a module may register several commands)
COMMANDS: dict[str, str] = {
    "serve": "node.serve_cli",
    "swarm": "node.swarm_cli",
    "models": "models.cli",
    "demo": "node.demo_cli",
    "train": "node.train_cli",
    "prefs": "node.prefs_cli",
    "gather": "checkpoint_gather.cli",
    "inspect": "checkpoint_gather.cli",
    "stamp": "checkpoint_gather.cli",
    "corpus": "corpus.cli",
    "rag": "rag.cli",
    "provider": "inference.provider",
    "api": "api.cli",
    "eval": "evaluation.cli",
    "model": "node.model_cli",
    "formula": "node.formula_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="node0",
        description="Decentralized fine-tuning and inference daemon for LLaMA-family models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered: set[str] = set()
    for name, module_name in COMMANDS.items():
        if name in subparsers.choices or module_name in registered:
            continue
        if only is not None and COMMANDS[only] != module_name:
            subparsers.add_parser(name, help=f"(see `node0 {name} --help`)")
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not built yet
        module.register(subparsers)
        registered.add(module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    openmp_spin.apply()  # before any command module imports torch
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(handler(args) or 0)
    except Node0Error as exc:
        print(f"node0 {args.command}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"node0 {args.command}: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
