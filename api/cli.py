"""``node0 api``: serve the swarm's model over OpenAI's HTTP API (see docs/api.md).

Without an API key the server listens on loopback only: a non-loopback ``--host`` without
``--api-key`` / ``--api-key-file`` is refused with exit code 12 before anything starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from api.errors import UnsafeBindError
from base.errors import ConfigError
from inference.swarm_args import add_swarm_arguments, swarm_peers

log = logging.getLogger("node0.api")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "api",
        help="serve the swarm over an OpenAI-compatible HTTP API",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_swarm_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable)")
    p.add_argument(
        "--api-key-file", type=Path, default=None, help="file with one accepted key per line"
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="context window (default: the model's)"
    )
    p.add_argument(
        "--step-timeout", type=float, default=30.0, help="seconds per stage step before failover"
    )
    p.set_defaults(handler=run_api)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys(args: argparse.Namespace) -> list[str]:
    keys = [k for k in args.api_key if k]
    if args.api_key_file is not None:
        try:
            text = args.api_key_file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ConfigError(f"--api-key-file {args.api_key_file} holds no key")
    return keys


def check_bind(host: str, keys: list[str]) -> None:
    if not keys and not is_loopback(host):
        raise UnsafeBindError(
            f"refusing to listen on {host} without an API key",
            hint="pass --api-key / --api-key-file, or listen on loopback (--host 127.0.0.1)",
        )


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.backend import SwarmBackend
    from api.server import create_app

    keys = api_keys(args)
    check_bind(args.host, keys)
    peers = swarm_peers(args)
    backend = SwarmBackend(
        args.model, peers, max_length=args.max_length, step_timeout=args.step_timeout
    )
    try:
        app = create_app(backend, api_keys=keys)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, loop="uvloop", log_level="info", access_log=False
        )
        log.info("node0 api: %s on http://%s:%d/v1", backend.model_id, args.host, args.port)
        uvicorn.Server(config).run()
    finally:
        backend.close()
    return 0
