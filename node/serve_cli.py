"""``node0 serve --config FILE``: run one daemon in the foreground."""

from __future__ import annotations

import argparse

from base.config_loader import load_yaml_config
from node.config import DaemonConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="host pipeline stages: gRPC server + DHT announcements",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="daemon YAML (see configs/daemon/)")
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        default=None,
        help="DHT multiaddrs to join (overrides the config)",
    )
    parser.add_argument("--port", type=int, default=None, help="gRPC port (overrides the config)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from node.daemon import Daemon

    config, sha = load_yaml_config(args.config, DaemonConfig)
    overrides = {}
    if args.initial_peers is not None:
        overrides["initial_peers"] = args.initial_peers
    if args.port is not None:
        overrides["port"] = args.port
    if overrides:
        config = DaemonConfig.model_validate({**config.model_dump(), **overrides})
    daemon = Daemon(config, config_path=args.config, config_sha256=sha)
    daemon.install_signal_handlers()
    return daemon.run()
