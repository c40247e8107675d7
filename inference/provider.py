"""``node0 provider settings``: the town-settings entry that makes node0 a Gas Town provider.

Prints the JSON a rig merges into its town settings: an agent named ``node0-<role>`` whose
command is ``node0-inference`` with the model, adapters and role, and the role mapping.
"""

from __future__ import annotations

import argparse
import json

from inference.transcript import ROLES


def settings_entry(role: str, model: str, adapters: list[str], extra_args: list[str]) -> dict:
    agent = f"node0-{role}"
    args = ["--model", model, "--role", role]
    if adapters:
        args += ["--adapters", ",".join(adapters)]
    return {
        "agents": {
            agent: {"command": "node0-inference", "args": args + extra_args, "provider": "node0"}
        },
        "roles": {role: agent},
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "provider",
        help="Gas Town provider integration",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="provider_command", metavar="ACTION", required=True)
    settings = sub.add_parser(
        "settings",
        help="print the town-settings JSON entry for a role",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    settings.add_argument("--role", required=True, choices=ROLES, help="the Gas Town role")
    settings.add_argument("--model", default="smollm2-135m", help="model served by the swarm")
    settings.add_argument("--adapters", default="", help="comma-separated task adapters")
    settings.add_argument("--rag", default=None, help="RAG store path passed to the agent")
    settings.set_defaults(handler=run_settings)


def run_settings(args: argparse.Namespace) -> int:
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    extra = ["--rag", args.rag] if args.rag else []
    print(json.dumps(settings_entry(args.role, args.model, adapters, extra), indent=2))
    return 0
