"""``node0 swarm up|status|down``: a local multi-process swarm from a preset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from base.config_loader import load_yaml_config
from node.config import SwarmPreset, resolve_preset_path

DEFAULT_PRESET = "smollm2-3stage"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "swarm",
        help="start, list and stop a local swarm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="swarm_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state",
        type=Path,
        default=None,
        help="state file (default $NODE0_SWARM_FILE or $NODE0_HOME/swarm/current.json)",
    )
    up = sub.add_parser(
        "up",
        parents=[common],
        help="start the peers of a preset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    up.add_argument(
        "--preset", default=DEFAULT_PRESET, help="preset name in configs/swarm/ or a YAML path"
    )
    up.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where the swarm's run directory (logs, configs, record) goes",
    )
    up.set_defaults(handler=run_up)
    status = sub.add_parser("status", parents=[common], help="list peers, stages, endpoints")
    status.set_defaults(handler=run_status)
    down = sub.add_parser("down", parents=[common], help="stop every peer (SIGTERM, then KILL)")
    down.set_defaults(handler=run_down)


def _state_file(args) -> Path:
    from base.swarm_view import default_swarm_file

    return args.state or default_swarm_file()


def run_up(args: argparse.Namespace) -> int:
    from base.banner import print_banner, status
    from node.local_swarm import start_swarm

    path = resolve_preset_path(args.preset)
    preset, sha = load_yaml_config(path, SwarmPreset)
    print_banner(
        "swarm up",
        path,
        sha,
        [f"model: {preset.model}"]
        + [f"peer {p.name}: layers " + ", ".join(str(s) for s in p.stages) for p in preset.peers],
    )
    state = start_swarm(
        preset,
        args.preset,
        runs_dir=args.runs_dir,
        state_file=_state_file(args),
        preset_path=str(path),
        preset_sha256=sha,
    )
    status("up", f"{len(state.peers)} peers running; logs in {state.run_dir}/logs")
    return print_status(_state_file(args))


def print_status(state_file: Path) -> int:
    from base.errors import SwarmError
    from base.routing import plan_route
    from inference.swarm_client import SwarmClient
    from node.local_swarm import SwarmState, peer_id_of, pid_alive

    if not state_file.is_file():
        raise SwarmError(
            f"no local swarm state at {state_file}", hint="start one with `node0 swarm up`"
        )
    state = SwarmState.load(state_file)
    client = SwarmClient(state.model, state.initial_peers)
    try:
        records = client.records()
    finally:
        client.close()
    print(f"swarm {state.preset} (model {state.model}), run dir {state.run_dir}")
    print(
        f"{'peer':<10} {'pid':>8} {'alive':<6} {'layers':<10} {'endpoint':<22} {'state':<8} "
        f"{'load':>5} {'batch':>6} {'peak':>4} {'queue':>5} {'step_ms':>8} {'tok/s':>7} "
        f"{'dtype':<9} {'device':<7}"
    )
    for peer in state.peers:
        alive = pid_alive(peer.pid)
        peer_id = peer_id_of(peer)
        for start, end in peer.stages:
            rec = next(
                (r for r in records if r.peer_id == peer_id and r.span == (start, end)), None
            )
            print(
                f"{peer.name:<10} {peer.pid:>8} {str(alive).lower():<6} "
                f"{f'[{start}, {end})':<10} {rec.endpoint if rec else '-':<22} "
                f"{rec.state if rec else 'absent':<8} "
                + (
                    f"{rec.load:>5.2f} {rec.batch_size:>6.2f} {rec.peak_batch_size:>4d} "
                    f"{rec.queue_depth:>5d} "
                    f"{rec.step_ms:>8.1f} {rec.tokens_per_s:>7.1f} {rec.dtype:<9} {rec.device:<7}"
                    if rec
                    else f"{'-':>5} {'-':>6} {'-':>4} {'-':>5} {'-':>8} {'-':>7} {'-':<9} {'-':<7}"
                )
            )
    try:
        route = plan_route(records, state.model)
    except SwarmError as exc:
        print(f"route: none: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    layers = route[-1].num_layers
    print(
        f"route: {len(route)} stages cover layers 0-{layers - 1} ({layers} layers): "
        + " -> ".join(f"{r.endpoint}[{r.start},{r.end})" for r in route)
    )
    return 0


def run_status(args: argparse.Namespace) -> int:
    return print_status(_state_file(args))


def run_down(args: argparse.Namespace) -> int:
    from node.local_swarm import stop_swarm

    state = stop_swarm(_state_file(args))
    print(
        f"stopped {len(state.peers)} peers of swarm {state.preset}; logs kept in "
        f"{state.run_dir}/logs"
    )
    return 0
