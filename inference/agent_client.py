"""``node0-inference``: the stdin/stdout client for agent sessions.

Turn protocol (also in the README):
- A prompt is one line of stdin. With ``--delimiter D`` a prompt is every line up to a line that
  is exactly ``D`` (multi-line prompts). EOF ends a pending prompt and then the session (exit 0).
- The answer streams to stdout as it is generated and ends with one newline. With ``--json``
  stdout carries JSON lines instead: ``{"type": "token", "text": …}`` events, then one
  ``{"type": "done", …}`` (finish reason, token counts, timings) — or ``{"type": "error", …}``.
- The conversation is kept: each prompt is a user turn after the previous answers.
- Nothing is ever asked on stdin; a prompt marker ``> `` goes to stderr only when stdin is a TTY.
- A failed turn (prompt too long, a stage lost with no replica) is reported on stderr (or as a
  JSON error) and the session goes on; failures before the first prompt exit with the error
  family's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc

from base.errors import ExitCode, Node0Error, RequestError

log = logging.getLogger("node0-inference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="node0-inference",
        description="Talk to a model served by a node0 swarm over stdin/stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--system", default=None, help="system message for the conversation")
    p.add_argument(
        "--prompt-format",
        choices=["chat", "completion"],
        default=None,
        help="default: the model's catalog entry (chat for instruct models)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="context window for the session (default: the model's)",
    )
    p.add_argument(
        "--delimiter", default=None, help="multi-line prompts end with a line equal to this"
    )
    p.add_argument("--json", action="store_true", help="JSON-lines output")
    p.add_argument(
        "--role",
        default="crew",
        choices=["mayor", "polecat", "witness", "deacon", "boot", "crew"],
        help="Gas Town role: filters retrieved context, tags the transcript",
    )
    p.add_argument(
        "--rig",
        default=os.environ.get("GT_RIG", "local"),
        help="rig name (default $GT_RIG): filters context, tags the transcript",
    )
    p.add_argument("--adapters", default="", help="comma-separated task adapters to stack")
    p.add_argument(
        "--rag", default="off", help="RAG store directory (built by `node0 rag index`) or 'off'"
    )
    p.add_argument(
        "--rag-budget",
        type=int,
        default=None,
        help="context tokens per turn (default: the RAG config's budget)",
    )
    p.add_argument(
        "--transcript",
        type=Path,
        default=None,
        help="append the session transcript (JSONL) here; default "
        "$NODE0_HOME/transcripts/<rig>.jsonl; 'off' disables",
    )
    p.add_argument("--bead", default=os.environ.get("GT_BEAD"), help="bead id (transcript)")
    p.add_argument("--task", default=None, help="task category (transcript)")
    p.add_argument("--agent", default=os.environ.get("GT_AGENT"), help="agent name (transcript)")
    p.add_argument(
        "--outcome",
        choices=["success", "failure"],
        default=None,
        help="override the transcript outcome (default: success when every "
        "turn was answered without error)",
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=30.0,
        help="seconds a stage may take per step before failover",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return p


def read_prompts(stream, delimiter: str | None) -> Iterator[str]:
    if delimiter is None:
        for line in stream:
            text = line.rstrip("\n")
            if text.strip():
                yield text
        return
    lines: list[str] = []
    for line in stream:
        text = line.rstrip("\n")
        if text == delimiter:
            if lines:
                yield "\n".join(lines)
            lines = []
        else:
            lines.append(text)
    if any(line.strip() for line in lines):
        yield "\n".join(lines)


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def _line(self, event: dict) -> None:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def text(self, chunk: str) -> None:
        if self.as_json:
            self._line({"type": "token", "text": chunk})
        else:
            sys.stdout.write(chunk)
            sys.stdout.flush()

    def done(self, result) -> None:
        if self.as_json:
            self._line(
                {
                    "type": "done",
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": len(result.token_ids),
                    "reused_tokens": result.reused_tokens,
                    "time_to_first_token_s": round(result.time_to_first_token, 4),
                    "elapsed_s": round(result.elapsed, 4),
                }
            )
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()

    def error(self, exc: Exception, code: int) -> None:
        if self.as_json:
            self._line({"type": "error", "message": str(exc), "exit_code": code})
        print(f"node0-inference: error: {exc}", file=sys.stderr, flush=True)


def _transcript_path(args: argparse.Namespace) -> Path | None:
    if args.transcript is not None:
        return None if str(args.transcript) == "off" else args.transcript
    from base.paths import node0_home

    return node0_home() / "transcripts" / f"{args.rig}.jsonl"


def _open_rag(args: argparse.Namespace):
    """The RAG store and config for ``--rag PATH`` (None, None with ``--rag off``)."""
    if args.rag == "off":
        return None, None
    from rag import RagStore, load_rag_config

    if not Path(args.rag).is_dir():
        raise RequestError(
            f"RAG store {args.rag} does not exist",
            hint="build it with `node0 rag index --rig RIG --store PATH`",
        )
    config = load_rag_config()
    return RagStore.open(config, path=Path(args.rag)), config


def _fit_window(messages: list[dict[str, str]], fits) -> list[dict[str, str]]:
    """Drop the oldest exchanges (never the system message) until the prompt fits."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    while len(rest) > 1 and not fits(system + rest):
        rest = rest[2:] if len(rest) > 2 else rest[1:]
    return system + rest


async def run_session(args: argparse.Namespace) -> int:
    from base.sampler import SamplingParams
    from base.swarm_view import initial_peers_from
    from dataload.prompt_format import encode_prompt, render
    from inference.generation import generate
    from inference.swarm_client import SwarmClient
    from inference.transcript import SessionTranscript
    from models.catalog import CATALOG

    try:
        sampling = SamplingParams(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    adapters = tuple(a.strip() for a in args.adapters.split(",") if a.strip())
    store, rag_config = _open_rag(args)
    peers = args.initial_peers or initial_peers_from(args.swarm_file)
    client = SwarmClient(args.model, peers)
    out = Output(args.json)
    transcript = SessionTranscript(
        rig=args.rig, role=args.role, agent=args.agent, bead_id=args.bead, task=args.task
    )
    session = None
    try:
        tokenizer = client.load_tokenizer()
        spec = CATALOG.get(args.model)
        mode = args.prompt_format or (spec.prompt_format if spec else "completion")
        client.wait_for_route()  # fail fast, naming missing layers, before reading stdin
        window = _context_window(client)
        max_length = min(args.max_length or window, window)
        eos = _eos_ids(client, tokenizer)
        session = client.session(
            max_length=max_length, adapters=adapters, step_timeout=args.step_timeout
        )
        await session.open()

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        def encode(msgs: list[dict[str, str]]) -> list[int]:
            return encode_prompt(render(msgs, mode=mode, tokenizer=tokenizer), tokenizer, mode=mode)

        messages: list[dict[str, str]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
            transcript.add("system", args.system)
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        for prompt in read_prompts(sys.stdin, args.delimiter):
            transcript.add("user", prompt)
            try:
                content = prompt
                if store is not None:
                    from rag import RetrievalSettings, assemble_prompt

                    content = assemble_prompt(
                        prompt,
                        store=store,
                        rig=args.rig if args.rig != "local" else None,
                        role=args.role,
                        count_tokens=count_tokens,
                        query=prompt,
                        budget_tokens=args.rag_budget or rag_config.budget_tokens,
                        settings=RetrievalSettings.from_config(rag_config),
                        min_entry_tokens=rag_config.min_entry_tokens,
                    ).text
                turn = _fit_window(
                    [*messages, {"role": "user", "content": content}],
                    lambda m: len(encode(m)) + args.max_new_tokens < max_length,
                )
                result = await generate(
                    session,
                    tokenizer,
                    encode(turn),
                    max_new_tokens=args.max_new_tokens,
                    sampling=sampling,
                    stop=tuple(args.stop),
                    eos_token_ids=eos,
                    on_text=out.text,
                )
            except Node0Error as exc:
                transcript.errors += 1
                out.error(exc, int(exc.exit_code))
            except grpc.aio.AioRpcError as exc:
                transcript.errors += 1
                out.error(
                    RequestError(f"{exc.code().name}: {exc.details()}"), int(ExitCode.REQUEST)
                )
            else:
                out.done(result)
                transcript.add("assistant", result.text)
                messages = [*turn, {"role": "assistant", "content": result.text}]
            if sys.stdin.isatty():
                print("> ", end="", file=sys.stderr, flush=True)
    finally:
        if session is not None:
            await session.close()
        client.close()
        if store is not None:
            store.close()
        path = _transcript_path(args)
        if path is not None and len(transcript.turns) > (1 if args.system else 0):
            transcript.append_to(path, outcome=args.outcome)
            log.info("transcript appended to %s", path)
    return 0


def _context_window(client) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(client.model_dir).max_position_embeddings)


def _eos_ids(client, tokenizer) -> frozenset[int]:
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(client.model_dir).eos_token_id
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass
    return frozenset(ids)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(run_session(args))
    except Node0Error as exc:
        print(f"node0-inference: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
