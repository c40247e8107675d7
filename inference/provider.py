"""``node0 provider settings``: the town-settings entry that makes node0 a Gas Town provider.

Prints the JSON a rig merges into its town settings: an agent named ``node0-<role>`` and the
role mapping. Two harnesses:

- ``node0-inference`` (the default): the agent's command is ``node0-inference`` with the
  model, adapters and role; it joins the swarm itself.
- ``pi``: the agent is pi (``@mariozechner/pi-coding-agent``) with node0 as an
  OpenAI-compatible provider, talking to ``node0 api``. The entry then also carries the two
  files of pi's agent directory (``$PI_CODING_AGENT_DIR``, default ``~/.pi/agent``) that
  declare the provider, under ``"pi"``: ``models.json`` (provider ``node0``: ``baseUrl``,
  ``api: "openai-completions"``, ``apiKey``, the model with its ``contextWindow`` and
  ``maxTokens``) and ``settings.json`` (pi's compaction sized for that window).
  ``--write-pi-config DIR`` merges them into the files in DIR.

Why ``maxTokens`` and the compaction settings are always written: pi asks for
``max_completion_tokens: maxTokens`` (16384 unless models.json says otherwise) on every
request, and ``node0 api`` refuses a request whose prompt + max tokens exceed the context
window (400 ``context_length_exceeded``, as vLLM does); SmolLM2-135M's window is 8192 tokens and
pi's own prompt (system prompt + tool schemas) takes ~1.5k. pi also compacts the session once
``context > contextWindow - compaction.reserveTokens`` (default 16384: after every answer on an
8k window), and asks for ``0.8 * reserveTokens`` tokens of summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlparse

from base.atomic import atomic_write
from base.errors import ConfigError, Node0Error
from inference.transcript import ROLES

HARNESSES = ("node0-inference", "pi")
PI_PROVIDER = "node0"
DEFAULT_API_BASE = "http://127.0.0.1:8000/v1"
DEFAULT_MAX_TOKENS = 256
DEFAULT_API_KEY_ENV = "NODE0_API_KEY"


def settings_entry(role: str, model: str, adapters: list[str], extra_args: list[str]) -> dict:
    """The entry for a ``node0-inference`` agent of ``role``."""
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


def pi_models_json(
    model_id: str,
    *,
    api_base: str = DEFAULT_API_BASE,
    context_window: int,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    api_key: str = DEFAULT_API_KEY_ENV,
    name: str | None = None,
) -> dict:
    """pi's ``models.json`` content declaring ``node0 api`` as the provider ``node0``.

    Args:
        model_id: the id ``node0 api`` serves (``GET /v1/models``): the base model or one
            adapter.
        api_base: the server's ``/v1`` base URL.
        context_window: the server's context window in tokens (its model's, or
            ``node0 api --max-length``).
        max_tokens: the answer's length limit pi asks for on every request; prompt + this must
            fit ``context_window``, or the server answers 400.
        api_key: what pi sends as the bearer token: pi reads the environment variable of that
            name, else takes the value literally (a keyless loopback server ignores it).
        name: the label pi shows (default: ``<model_id> (node0)``).

    Raises:
        Node0Error: a URL that is not http(s), or a window/limit that leaves no room.
    """
    url = urlparse(api_base)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise Node0Error(f"--api-base must be an http(s) URL such as {DEFAULT_API_BASE}")
    if context_window < 2:
        raise Node0Error(f"--context-window must be at least 2, got {context_window}")
    if not 1 <= max_tokens < context_window:
        raise Node0Error(
            f"--max-tokens must be between 1 and the context window ({context_window}) less "
            f"the prompt, got {max_tokens}"
        )
    return {
        "providers": {
            PI_PROVIDER: {
                "baseUrl": api_base.rstrip("/"),
                "api": "openai-completions",
                "apiKey": api_key,
                # pi sends the system prompt as "system" and no reasoning_effort
                "compat": {"supportsDeveloperRole": False, "supportsReasoningEffort": False},
                "models": [
                    {
                        "id": model_id,
                        "name": name or f"{model_id} (node0)",
                        "reasoning": False,
                        "input": ["text"],
                        "contextWindow": context_window,
                        "maxTokens": max_tokens,
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                    }
                ],
            }
        }
    }


def pi_settings_json(context_window: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """pi's ``settings.json`` content: compaction sized for ``context_window``.

    pi compacts once the context passes ``context_window - reserveTokens`` and asks for
    ``0.8 * reserveTokens`` tokens of summary; a quarter of the window (at least the answer's
    limit) keeps compaction rare and its summary request inside the window.
    """
    reserve = max(context_window // 4, max_tokens + 64)
    return {
        "compaction": {
            "enabled": True,
            "reserveTokens": reserve,
            "keepRecentTokens": context_window // 4,
        }
    }


def pi_entry(
    role: str,
    model: str,
    adapters: list[str],
    *,
    api_base: str = DEFAULT_API_BASE,
    context_window: int,
    max_tokens: int | None = None,
    api_key: str = DEFAULT_API_KEY_ENV,
) -> dict:
    """The entry for a pi agent of ``role`` on ``node0 api``, with pi's two config files.

    ``node0 api`` serves the base model and each task adapter as its own model id, one adapter
    at a time: with an adapter the agent asks for that id. ``max_tokens`` defaults to
    :data:`DEFAULT_MAX_TOKENS`, at most half the window.

    Raises:
        Node0Error: more than one adapter, or bad provider values (see :func:`pi_models_json`).
    """
    if len(adapters) > 1:
        raise Node0Error(
            f"node0 api serves one adapter per model id; --harness pi takes one, got {adapters}"
        )
    model_id = adapters[0] if adapters else _model_id(model)
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, context_window // 2)
    agent = f"node0-{role}"
    return {
        "agents": {
            agent: {
                "command": "pi",
                "args": ["--provider", PI_PROVIDER, "--model", model_id],
                "provider": "node0",
            }
        },
        "roles": {role: agent},
        "pi": {
            "models.json": pi_models_json(
                model_id,
                api_base=api_base,
                context_window=context_window,
                max_tokens=max_tokens,
                api_key=api_key,
            ),
            "settings.json": pi_settings_json(context_window, max_tokens),
        },
    }


def write_pi_config(directory: Path, files: dict[str, dict]) -> list[Path]:
    """Merge ``files`` (``{"models.json": …, "settings.json": …}``) into pi's agent directory.

    Other providers in ``models.json`` and other settings stay; the ``node0`` provider and the
    ``compaction`` settings are replaced. Each file is written atomically.

    Raises:
        ConfigError: an existing file that is not a JSON object.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, content in files.items():
        path = directory / filename
        current = _read_json_object(path)
        for key, value in content.items():
            if key == "providers":
                current["providers"] = {**current.get("providers", {}), **value}
            else:
                current[key] = value
        atomic_write(path, json.dumps(current, indent=2) + "\n")
        written.append(path)
    return written


def default_context_window(model: str) -> int:
    """The model's context window from its prepared checkpoint's ``config.json``.

    Raises:
        CheckpointError: the model is not prepared here (pass ``--context-window``).
    """
    from models.catalog import resolve_model_dir

    config = json.loads((resolve_model_dir(model) / "config.json").read_text())
    return int(config["max_position_embeddings"])


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
    settings.add_argument(
        "--harness",
        default="node0-inference",
        choices=HARNESSES,
        help="the agent's program: node0-inference (joins the swarm), or pi on node0 api",
    )
    settings.add_argument(
        "--api-base", default=DEFAULT_API_BASE, help="pi: the /v1 base URL of node0 api"
    )
    settings.add_argument(
        "--context-window",
        type=int,
        default=None,
        help="pi: the server's context window in tokens (default: the prepared model's)",
    )
    settings.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"pi: answer length limit sent with every request; prompt + it must fit the "
        f"window (default: {DEFAULT_MAX_TOKENS}, at most half the window)",
    )
    settings.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        help="pi: environment variable holding the server's API key (unset: any key is sent)",
    )
    settings.add_argument(
        "--write-pi-config",
        type=Path,
        default=None,
        metavar="DIR",
        help="pi: also merge models.json and settings.json into pi's agent directory DIR "
        "(e.g. ~/.pi/agent)",
    )
    settings.set_defaults(handler=run_settings)


def run_settings(args: argparse.Namespace) -> int:
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    if args.harness == "node0-inference":
        if args.write_pi_config is not None:
            raise Node0Error("--write-pi-config is for --harness pi")
        extra = ["--rag", args.rag] if args.rag else []
        entry = settings_entry(args.role, args.model, adapters, extra)
    else:
        if args.rag:
            raise Node0Error("--rag is for --harness node0-inference (node0 api has no RAG yet)")
        window = args.context_window or default_context_window(args.model)
        entry = pi_entry(
            args.role,
            args.model,
            adapters,
            api_base=args.api_base,
            context_window=window,
            max_tokens=args.max_tokens,
            api_key=args.api_key_env,
        )
        if args.write_pi_config is not None:
            write_pi_config(args.write_pi_config.expanduser(), entry["pi"])
    print(json.dumps(entry, indent=2))
    return 0


def _model_id(model: str) -> str:
    """The id ``node0 api`` lists for ``model`` (a directory's name, as its backend does)."""
    path = Path(model)
    return path.name if path.is_dir() else model


def _read_json_object(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value
