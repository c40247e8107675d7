"""``node0 swarm up|status|down``: a local multi-process swarm from a preset; ``node0 swarm
init|invite|revoke``: the swarm authority (security/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from base.config_loader import load_yaml_config
from node.config import SwarmPreset, describe_stages, resolve_preset_path

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
    up.add_argument(
        "--insecure-open-swarm",
        action="store_true",
        help="no access control: anyone reaching the ports may join, call and average "
        "(default: a private swarm with credentials from the local authority)",
    )
    up.set_defaults(handler=run_up)
    authority = argparse.ArgumentParser(add_help=False)
    authority.add_argument(
        "--authority",
        type=Path,
        default=None,
        help="the authority's directory (default $NODE0_HOME/swarm/authority)",
    )
    init = sub.add_parser(
        "init", parents=[authority], help="create the swarm authority's signing key (Ed25519)"
    )
    init.set_defaults(handler=run_init)
    invite = sub.add_parser(
        "invite",
        parents=[authority],
        help="issue a credential: NAME, role and expiry, bound to the peer's key",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    invite.add_argument("name", help="who the credential is for (shown in refusals and logs)")
    invite.add_argument(
        "--role",
        required=True,
        choices=["host", "trainer", "client", "gatherer"],
        help="client: inference sessions; trainer: also training jobs; gatherer: pull "
        "weights; host: a daemon (every RPC, DHT records, averaging)",
    )
    invite.add_argument("--expires", default="30d", help="validity: 30d, 12h, 15m or seconds")
    invite.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="the peer's RSA public key (OpenSSH text) to bind; the output then holds no "
        "private key (default: generate the peer's key into the credential file)",
    )
    invite.add_argument(
        "--out",
        type=Path,
        default=None,
        help="credential file to write (default <authority>/credentials/NAME.json)",
    )
    invite.set_defaults(handler=run_invite)
    revoke = sub.add_parser(
        "revoke",
        parents=[authority],
        help="revoke credentials by name or id (peers honour it within one heartbeat)",
    )
    revoke.add_argument("names", nargs="+", metavar="NAME_OR_ID")
    revoke.set_defaults(handler=run_revoke)
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
        + [
            "access: INSECURE OPEN SWARM (--insecure-open-swarm): anyone reaching the ports may "
            "join the DHT, call every RPC, pull weights and join averaging"
            if args.insecure_open_swarm or preset.daemon.get("insecure_open_swarm")
            else "access: private swarm; credentials from the local authority "
            "($NODE0_HOME/swarm/authority)"
        ]
        + [f"peer {p.name}: layers " + describe_stages(p.stages) for p in preset.peers],
    )
    state = start_swarm(
        preset,
        args.preset,
        runs_dir=args.runs_dir,
        state_file=_state_file(args),
        preset_path=str(path),
        preset_sha256=sha,
        insecure_open_swarm=args.insecure_open_swarm,
    )
    status("up", f"{len(state.peers)} peers running; logs in {state.run_dir}/logs")
    return print_status(_state_file(args))


def network_column(record) -> str:
    """``812.3 (measured)``, ``100.0 (declared)``, or ``-`` while the peer knows no figure."""
    if record.network_mbps <= 0:
        return "-"
    return f"{record.network_mbps:.1f} ({record.network_source or 'unknown'})"


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
        f"{'dtype':<9} {'device':<7} {'network Mbit/s':<20}"
    )
    for peer in state.peers:
        alive = pid_alive(peer.pid)
        peer_id = peer_id_of(peer)
        spans = peer.stages or sorted(  # stages auto: the spans its records name
            {r.span for r in records if r.peer_id == peer_id and r.state != "offline"}
        )
        for start, end in spans:
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
                    f"{rec.step_ms:>8.1f} {rec.tokens_per_s:>7.1f} {rec.dtype:<9} {rec.device:<7} "
                    f"{network_column(rec):<20}"
                    if rec
                    else f"{'-':>5} {'-':>6} {'-':>4} {'-':>5} {'-':>8} {'-':>7} {'-':<9} {'-':<7} "
                    f"{'-':<20}"
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


def run_init(args: argparse.Namespace) -> int:
    from security.authority import SwarmAuthority

    authority = SwarmAuthority.init(args.authority)
    print(f"swarm {authority.swarm_id}: authority key in {authority.directory}/authority.key")
    return 0


def run_invite(args: argparse.Namespace) -> int:
    from security.authority import SwarmAuthority, parse_duration

    authority = SwarmAuthority.load(args.authority)
    public = args.public_key.read_text().strip() if args.public_key else None
    issued = authority.invite(
        args.name, args.role, validity_s=parse_duration(args.expires), peer_public_key=public
    )
    out = args.out or authority.directory / "credentials" / f"{args.name}.json"
    if public is None:
        issued.save(out)
        credential = issued.credential
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(issued.model_dump_json(indent=2) + "\n")
        credential = issued.credential
    print(
        f"{credential.name}: role {credential.role}, id {credential.credential_id}, swarm "
        f"{credential.swarm_id}, expires {credential.expires_at:.0f} (unix); written to {out}"
    )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from security.authority import SwarmAuthority

    authority = SwarmAuthority.load(args.authority)
    for entry in authority.revoke(args.names):
        print(f"revoked {entry['name']} ({entry['role']}, id {entry['credential_id']})")
    print(f"revocation list: {authority.revocations_path}")
    return 0
