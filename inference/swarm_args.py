"""The command-line flags every swarm client front end shares: which model, which swarm.

``node0-inference`` and ``node0 api`` join a swarm the same way: the DHT multiaddrs given, or
the local swarm's state file (``node0 swarm up``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_swarm_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--initial-peers``, ``--swarm-file`` and ``--credential``."""
    p.add_argument("--model", default="smollm2-135m", help="model name (catalog) or HF dir")
    p.add_argument(
        "--initial-peers",
        nargs="*",
        default=None,
        help="DHT multiaddrs; default: the local swarm started by `node0 swarm up`",
    )
    p.add_argument(
        "--swarm-file",
        type=Path,
        default=None,
        help="local swarm state file (default $NODE0_HOME/swarm/current.json)",
    )
    p.add_argument(
        "--credential",
        type=Path,
        default=None,
        help="this client's swarm credential (`node0 swarm invite NAME --role ROLE`); "
        "default $NODE0_CREDENTIAL, else the local swarm's local-<role>.json",
    )


def swarm_peers(args: argparse.Namespace) -> list[str]:
    """The DHT multiaddrs to join: the flag's, else the local swarm's (and, with
    ``--credential``, the credential this process presents from now on)."""
    from base.swarm_view import initial_peers_from
    from security.active import use_credential

    if getattr(args, "credential", None):
        use_credential(args.credential)

    return args.initial_peers or initial_peers_from(args.swarm_file)
