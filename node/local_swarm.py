"""A local multi-process swarm: start, inspect and stop N daemons on loopback.

Each daemon runs in its own process group (``start_new_session``), so stopping a peer stops its
DHT child and ``p2pd`` too — never an orphan. The first peer starts the DHT and writes its
addresses to a file (atomically: a half-written file would make the others start a separate
DHT); the others join through it. State (pids, process groups, logs, initial peers) goes to a
JSON state file that ``status``/``down`` and ``node0-inference`` read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from base.config_loader import load_yaml_config
from base.errors import SwarmError
from base.paths import node0_home
from models.catalog import CATALOG
from node.config import DaemonConfig, SwarmPreset
from provenance import RunDir, atomic_write, create_run_dir

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


@dataclass
class PeerProcess:
    name: str
    pid: int
    stages: list[list[int]]  # empty: stages auto (the DHT records say which)
    log: str
    config: str
    maddr_file: str


@dataclass
class SwarmState:
    run_dir: str
    preset: str
    model: str
    initial_peers: list[str]
    peers: list[PeerProcess]

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SwarmState:
        data = json.loads(path.read_text())
        data["peers"] = [PeerProcess(**p) for p in data["peers"]]
        return cls(**data)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as dead
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def peer_id_of(peer: PeerProcess) -> str | None:
    """The DHT peer id a daemon wrote into its address file (``…/p2p/<id>``)."""
    try:
        first = Path(peer.maddr_file).read_text().split()[0]
    except (OSError, IndexError):
        return None
    return first.rsplit("/p2p/", 1)[-1]


def _launch(run: RunDir, name: str, config: DaemonConfig) -> PeerProcess:
    peers_dir = run.path / "peers"
    logs_dir = run.path / "logs"
    peers_dir.mkdir(exist_ok=True)
    logs_dir.mkdir(exist_ok=True)
    config_path = peers_dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True))
    log_path = logs_dir / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
    return PeerProcess(
        name=name,
        pid=process.pid,
        stages=[] if config.stages == "auto" else [[s.start, s.end] for s in config.stages],
        log=str(log_path),
        config=str(config_path),
        maddr_file=str(config.peer_file),
    )


def _wait_ready(peers: list[PeerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(peers)
    while pending:
        for peer in list(pending):
            if Path(peer.maddr_file).is_file():
                pending.remove(peer)
            elif not pid_alive(peer.pid):
                raise SwarmError(
                    f"peer {peer.name} exited during start-up; its log "
                    f"({peer.log}) ends with:\n{_tail(peer.log)}"
                )
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            raise SwarmError(
                f"peers {names} not ready after {timeout:g} s; see logs in "
                f"{Path(pending[0].log).parent}"
            )
        time.sleep(0.2)


def _access_fields(run: RunDir, name: str, authority, insecure_open_swarm: bool) -> dict:
    """The daemon config fields that give peer ``name`` its access control."""
    if insecure_open_swarm:
        return {"insecure_open_swarm": True}
    if authority is None:  # the preset names its own credential
        return {}
    path = run.path / "peers" / f"{name}.credential.json"
    authority.invite(name, "host").save(path)
    return {"credential": str(path), "revocations": str(authority.revocations_path)}


def start_swarm(
    preset: SwarmPreset,
    preset_name: str,
    *,
    runs_dir: Path,
    state_file: Path,
    preset_path: str | None = None,
    preset_sha256: str | None = None,
    start_timeout: float = START_TIMEOUT_S,
    insecure_open_swarm: bool = False,
    authority_dir: Path | None = None,
) -> SwarmState:
    """Start every peer of ``preset``; returns when all have announced their stages.

    A private swarm by default: the local authority (``authority_dir``, default
    ``$NODE0_HOME/swarm/authority``, created on first use) issues each peer a host credential
    (``peers/<name>.credential.json`` in the run directory) and this machine's client
    credentials (:func:`security.authority.issue_local_credentials`). With
    ``insecure_open_swarm`` (or the preset's ``daemon.insecure_open_swarm``) nobody is checked.
    """
    if state_file.is_file():
        existing = SwarmState.load(state_file)
        if any(pid_alive(p.pid) for p in existing.peers):
            raise SwarmError(
                f"a swarm is already running (state {state_file})",
                hint="stop it with `node0 swarm down` first",
            )
    if preset.model in CATALOG:
        from models.assets import prepare_model

        prepare_model(preset.model)
    run = create_run_dir(
        runs_dir, "swarm", config=preset.model_dump(mode="json"), config_path=preset_path
    )
    run.set("preset", {"name": preset_name, "sha256": preset_sha256})
    insecure_open_swarm = insecure_open_swarm or bool(preset.daemon.get("insecure_open_swarm"))
    authority = None
    if not insecure_open_swarm and not preset.daemon.get("credential"):
        from security.authority import SwarmAuthority, issue_local_credentials

        authority = SwarmAuthority.init(authority_dir, exist_ok=True)
        issue_local_credentials(authority)
    run.set("access", "insecure-open" if insecure_open_swarm else "private")
    started: list[PeerProcess] = []
    try:
        initial: list[str] = []
        for index, peer in enumerate(preset.peers):
            config = DaemonConfig.model_validate(
                {
                    **preset.daemon,
                    "model": preset.model,
                    "stages": (
                        "auto" if peer.stages == "auto" else [s.model_dump() for s in peer.stages]
                    ),
                    "placement": {**preset.daemon.get("placement", {}), **peer.placement},
                    "initial_peers": initial,
                    "peer_file": str(run.path / "peers" / f"{peer.name}.maddrs"),
                    "state_dir": str(
                        Path(preset.daemon.get("state_dir") or node0_home() / "peers" / preset_name)
                        / peer.name
                    ),
                    **_access_fields(run, peer.name, authority, insecure_open_swarm),
                }
            )
            started.append(_launch(run, peer.name, config))
            if index == 0:  # the others bootstrap through the first peer
                _wait_ready(started, start_timeout)
                initial = Path(started[0].maddr_file).read_text().split()
        _wait_ready(started, start_timeout)
    except BaseException:
        stop_peers(started)
        run.finish("failed")
        raise
    state = SwarmState(
        run_dir=str(run.path),
        preset=preset_name,
        model=preset.model,
        initial_peers=initial,
        peers=started,
    )
    state.save(state_file)
    run.set("peers", [asdict(p) for p in started])
    return state


def stop_peers(
    peers: list[PeerProcess], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S
) -> None:
    """Stop daemons and everything they started.

    ``sig`` goes to each daemon's main process only (on SIGTERM it announces offline, drains and
    stops its own DHT child and p2pd); whatever is left of a process group afterwards, or after
    ``timeout``, is killed with SIGKILL.
    """
    for peer in peers:
        try:
            os.kill(peer.pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(pid_alive(p.pid) for p in peers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for peer in peers:
        try:
            os.killpg(peer.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            pid_alive(peer.pid)  # reap our child, if it is one
            try:
                os.killpg(peer.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def stop_peer(
    peer: PeerProcess, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S
) -> None:
    stop_peers([peer], sig, timeout)


def stop_swarm(state_file: Path) -> SwarmState:
    if not state_file.is_file():
        raise SwarmError(f"no local swarm state at {state_file}; nothing to stop")
    state = SwarmState.load(state_file)
    stop_peers(state.peers)
    state_file.unlink(missing_ok=True)
    record_path = Path(state.run_dir) / "run_record.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        RunDir(Path(state.run_dir), record).finish("stopped")
    return state


def restart_peer(
    state_file: Path, name: str, *, start_timeout: float = START_TIMEOUT_S
) -> PeerProcess:
    """Start peer ``name`` of a running local swarm again with its config (after it died).

    Its state directory is the same, so a training job resumes from the peer's checkpoint (or
    from a replica further along). The swarm state file then points at the new process.
    """
    state = SwarmState.load(state_file)
    index = next((i for i, p in enumerate(state.peers) if p.name == name), None)
    if index is None:
        raise SwarmError(
            f"the swarm has no peer {name!r}: {', '.join(p.name for p in state.peers)}"
        )
    old = state.peers[index]
    if pid_alive(old.pid):
        raise SwarmError(f"peer {name} is still running (pid {old.pid})", hint="stop it first")
    config, _ = load_yaml_config(old.config, DaemonConfig)
    if not config.initial_peers and state.initial_peers and index != 0:
        config = config.model_copy(update={"initial_peers": state.initial_peers})
    elif index == 0:  # the bootstrap peer rejoins through the others
        others = [
            a
            for p in state.peers
            if p.name != name and Path(p.maddr_file).is_file()
            for a in Path(p.maddr_file).read_text().split()
        ]
        config = config.model_copy(update={"initial_peers": others})
    Path(old.maddr_file).unlink(missing_ok=True)
    run = RunDir(
        Path(state.run_dir), json.loads((Path(state.run_dir) / "run_record.json").read_text())
    )
    peer = _launch(run, name, config)
    _wait_ready([peer], start_timeout)
    state.peers[index] = peer
    state.save(state_file)
    return peer
