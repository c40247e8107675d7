"""``node0 api``: serve the swarm's model over OpenAI's HTTP API (see docs/api.md).

Without an API key the server listens on loopback only: a non-loopback ``--host`` without
``--api-key`` / ``--api-key-file`` is refused with exit code 12 before anything starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from api.admission import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_QUEUE
from api.errors import UnsafeBindError
from api.extensions import DEFAULT_STORE, NAME
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
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help="requests generating at once; the others wait in the queue",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests waiting for a slot; beyond it: 429 queue_full with Retry-After",
    )
    p.add_argument(
        "--rag-store",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a RAG store (built by `node0 rag index`) that requests may name in their "
        "'rag' extension (repeatable)",
    )
    p.add_argument(
        "--rag",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"the RAG store named '{DEFAULT_STORE}' (taken when a request names no store)",
    )
    p.add_argument(
        "--transcript-dir",
        type=Path,
        default=None,
        help="where a request's 'transcript' extension appends <name>.jsonl "
        "(default: $NODE0_HOME/transcripts)",
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


def rag_store_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Store name → directory, from ``--rag-store NAME=PATH`` and ``--rag PATH``."""
    stores: dict[str, Path] = {}
    for spec in args.rag_store:
        name, sep, path = spec.partition("=")
        if not sep or not path or not NAME.fullmatch(name):
            raise ConfigError(
                f"--rag-store {spec!r}: use NAME=PATH, NAME of letters, digits, '_', '.', '-'"
            )
        if name in stores:
            raise ConfigError(f"--rag-store {name} is given twice")
        stores[name] = Path(path)
    if args.rag is not None:
        if DEFAULT_STORE in stores:
            raise ConfigError(f"--rag and --rag-store {DEFAULT_STORE}=… name the same store")
        stores[DEFAULT_STORE] = args.rag
    return stores


def check_queue(args: argparse.Namespace) -> None:
    if args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_queue < 0:
        raise ConfigError(f"--max-queue must be >= 0, got {args.max_queue}")


def run_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.backend import SwarmBackend
    from api.extensions import Extensions
    from api.metrics import Metrics
    from api.server import create_app
    from inference.rag_context import RagContext

    keys = api_keys(args)
    check_bind(args.host, keys)
    check_queue(args)
    paths = rag_store_paths(args)
    peers = swarm_peers(args)
    extensions = Extensions(transcript_dir=args.transcript_dir)
    try:
        for name, path in paths.items():
            extensions.rag_stores[name] = RagContext.open(path)
        metrics = Metrics()
        backend = SwarmBackend(
            args.model,
            peers,
            max_length=args.max_length,
            step_timeout=args.step_timeout,
            on_hop_step=metrics.observe_hop,
        )
    except BaseException:
        extensions.close()
        raise
    try:
        app = create_app(
            backend,
            api_keys=keys,
            metrics=metrics,
            max_concurrent=args.max_concurrent,
            max_queue=args.max_queue,
            extensions=extensions,
        )
        config = uvicorn.Config(
            app, host=args.host, port=args.port, loop="uvloop", log_level="info", access_log=False
        )
        log.info("node0 api: %s on http://%s:%d/v1", backend.model_id, args.host, args.port)
        uvicorn.Server(config).run()
    finally:
        backend.close()
        extensions.close()
    return 0
