"""``node0 prefs``: preference pairs from two model versions on the same bead.

    node0 prefs sling BEAD --models smollm2-135m+gastown,smollm2-135m [--check "go test ./..."]
    node0 prefs sling BEAD --models deacon-v1,deacon-v2     # registry versions (node0 model)
    node0 prefs pick BEAD --winner A [--reason …] [--source human|rig]   # or --auto
    node0 prefs undo BEAD        # until the next corpus build
    node0 prefs show BEAD

The sessions, verdicts and the guard are :mod:`inference.prefs`; the picked pairs reach the
corpus through ``node0 corpus build`` (transcripts under ``transcripts/prefs/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prefs",
        help="collect preference pairs: one bead, two model versions, a verdict",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="prefs_command", metavar="SUBCOMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("bead", metavar="BEAD", help="bead id in the rig's .beads/issues.jsonl")
        p.add_argument("--rig", type=Path, default=Path("."), help="the rig (a git repository)")

    sling = sub.add_parser("sling", help="run BEAD on two model versions", formatter_class=fmt)
    common(sling)
    sling.add_argument(
        "--models",
        required=True,
        help="two versions, comma-separated: registry versions (deacon-v1 or deacon@v1, "
        "resolved through $NODE0_REGISTRY) or MODEL[+ADAPTER…] (e.g. smollm2-135m+gastown)",
    )
    sling.add_argument("--check", default=None, help="command run in each worktree afterwards "
                       "(exit 0: checks passed), e.g. 'go test ./...'")  # fmt: skip
    sling.add_argument("--max-steps", type=int, default=8, help="tool-loop steps per session")
    sling.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply")
    sling.add_argument("--initial-peers", nargs="*", default=None, help="DHT multiaddrs")
    sling.add_argument("--swarm-file", type=Path, default=None, help="local swarm state file")
    sling.set_defaults(handler=run_sling)

    pick = sub.add_parser("pick", help="record the verdict for BEAD", formatter_class=fmt)
    common(pick)
    who = pick.add_mutually_exclusive_group(required=True)
    who.add_argument("--winner", help="session label (A or B) or its model spec")
    who.add_argument("--auto", action="store_true", help="the verdict from the outcomes")
    pick.add_argument("--reason", default="", help="why (kept with the verdict)")
    pick.add_argument("--source", choices=("human", "rig"), default="human", help="who judged")
    pick.set_defaults(handler=run_pick)

    undo = sub.add_parser("undo", help="take BEAD's pick back", formatter_class=fmt)
    common(undo)
    undo.add_argument("--corpus-runs", type=Path, default=Path("runs/corpus"),
                      help="corpus build runs; a build after the pick makes it final")  # fmt: skip
    undo.set_defaults(handler=run_undo)

    show = sub.add_parser("show", help="print BEAD's sessions and pick", formatter_class=fmt)
    common(show)
    show.set_defaults(handler=run_show)


def _swarm_runner(args: argparse.Namespace):
    """Sessions on the swarm: a conversation per version, through the tool loop."""
    import asyncio

    from inference.conversation import ConversationEngine, GenerationSettings
    from inference.prefs import tool_loop_runner
    from inference.swarm_args import swarm_peers
    from inference.swarm_client import SwarmClient
    from inference.tool_loop import LoopLimits, conversation_model

    settings = GenerationSettings.create(max_new_tokens=args.max_new_tokens)
    peers = swarm_peers(args)

    async def run(spec, task, worktree):
        client = SwarmClient(spec.base, peers)
        conversation = None
        try:
            if spec.version:  # a registry version: its adapter on every daemon first
                await asyncio.to_thread(_load_version, client, spec.version)
            engine = ConversationEngine.connect(client)
            conversation = engine.conversation(adapters=spec.adapters)
            await conversation.open()
            inner = tool_loop_runner(
                lambda _spec: conversation_model(conversation, settings),
                engine.tool_format,
                check=args.check,
                limits=LoopLimits(max_steps=args.max_steps),
            )
            return await inner(spec, task, worktree)
        finally:
            if conversation is not None:
                await conversation.close()
            client.close()

    return run


def _load_version(client, version: str) -> None:
    """Attach a registry version's adapter on every daemon of its base (``LoadAdapter``)."""
    from inference.registry_models import load_on_swarm, resolve_registered

    client.wait_for_route()
    load_on_swarm(client.records(), resolve_registered(version))


def run_sling(args: argparse.Namespace) -> int:
    import asyncio

    from base.errors import RequestError
    from inference.prefs import resolve_spec, sling

    specs = [resolve_spec(m) for m in args.models.split(",") if m.strip()]
    if len(specs) != 2:
        raise RequestError(f"--models takes two versions, got {len(specs)}")
    record = asyncio.run(sling(args.rig, args.bead, specs, _swarm_runner(args)))
    _print(record)
    return 0


def run_pick(args: argparse.Namespace) -> int:
    from inference.prefs import pick

    record = pick(
        args.rig,
        args.bead,
        None if args.auto else args.winner,
        reason=args.reason,
        source=args.source,
    )
    _print(record)
    return 0


def run_undo(args: argparse.Namespace) -> int:
    from inference.prefs import undo

    _print(undo(args.rig, args.bead, corpus_runs=args.corpus_runs))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from inference.prefs import PrefsStore

    _print(PrefsStore(args.rig).load(args.bead))
    return 0


def _print(record: dict) -> None:
    sessions = {
        label: {
            k: s.get(k) for k in ("model", "registry", "branch", "stop_reason", "checks_passed")
        }
        for label, s in sorted(record["sessions"].items())
    }
    print(json.dumps({"bead_id": record["bead_id"], "sessions": sessions, "pick": record["pick"]}))
