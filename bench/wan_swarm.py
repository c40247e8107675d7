"""A swarm of real daemons, one network namespace each, over an emulated WAN (:mod:`bench.wan_net`).

The same daemons as ``node0 swarm up`` (``node.cli serve`` with a ``DaemonConfig``), each
started with ``ip netns exec`` in its own host namespace, its own process group, binding gRPC
and its DHT (``p2pd``) to the namespace's address. They announce that address; the router's
transparent proxy delays every connection to it, so nothing has to announce a proxy address.
A private swarm, as ``node0 swarm up`` makes by default: the local authority issues each peer a
host credential, and this machine's client credentials. Writes a :class:`SwarmState` file that
``node0 train --swarm-file`` and :class:`~inference.swarm_client.SwarmClient` read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from bench.wan_net import WanNetwork

_REPO = Path(__file__).resolve().parent.parent


@contextmanager
def wan_swarm(
    net: WanNetwork,
    work: Path,
    model: str,
    peers: list[tuple[str, list[tuple[int, int]]]],
    *,
    start_timeout: float = 240.0,
    **daemon,
) -> Iterator:
    """Start one daemon per entry of ``peers`` in host namespace 0, 1, …; yields the
    :class:`node.local_swarm.SwarmState` (also saved as ``work/swarm.json``); always stops
    every daemon (SIGTERM, then SIGKILL of its process group)."""
    from node.config import DaemonConfig
    from node.local_swarm import PeerProcess, SwarmState, pid_alive, stop_peers
    from security.authority import SwarmAuthority, issue_local_credentials

    if len(peers) > net.hosts:
        raise ValueError(f"{len(peers)} peers but the network has {net.hosts} hosts")
    work.mkdir(parents=True, exist_ok=True)
    authority = SwarmAuthority.init(None, exist_ok=True)
    issue_local_credentials(authority)
    started: list[PeerProcess] = []
    initial: list[str] = []

    def wait(peer: PeerProcess) -> None:
        deadline = time.monotonic() + start_timeout
        while not Path(peer.maddr_file).is_file():
            if not pid_alive(peer.pid):
                tail = Path(peer.log).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"peer {peer.name} exited during start-up:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"peer {peer.name} not ready after {start_timeout:g} s")
            time.sleep(0.2)

    try:
        for index, (name, stages) in enumerate(peers):
            ip = net.host_ip(index)
            credential = work / f"{name}.credential.json"
            authority.invite(name, "host").save(credential)
            config = DaemonConfig.model_validate(
                {
                    "announce_period": 1.0,
                    "announce_ttl": 4.0,
                    **daemon,
                    "model": model,
                    "stages": [{"start": s, "end": e} for s, e in stages],
                    "host": ip,
                    "dht_host_maddrs": [f"/ip4/{ip}/tcp/0"],
                    "initial_peers": initial,
                    "peer_file": str(work / f"{name}.maddrs"),
                    "state_dir": str(work / "peer-state" / name),
                    "credential": str(credential),
                    "revocations": str(authority.revocations_path),
                }
            )
            config_path = work / f"{name}.yaml"
            config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True))
            log_path = work / f"{name}.log"
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    [
                        *net.exec_prefix(index),
                        *(sys.executable, "-m", "node.cli", "serve", "--config", str(config_path)),
                    ],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    cwd=_REPO,
                )
            peer = PeerProcess(
                name=name,
                pid=process.pid,
                stages=[list(s) for s in stages],
                log=str(log_path),
                config=str(config_path),
                maddr_file=str(config.peer_file),
            )
            started.append(peer)
            if index == 0:
                wait(peer)
                initial = Path(peer.maddr_file).read_text().split()
        for peer in started:
            wait(peer)
        state = SwarmState(
            run_dir=str(work), preset="wan", model=model, initial_peers=initial, peers=started
        )
        state.save(work / "swarm.json")
        yield state
    finally:
        stop_peers(started)
