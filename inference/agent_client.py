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

This module is only the front end (flags, the stdin/stdout protocol); the turns run on the
conversation engine, :mod:`inference.conversation`.
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

from base.errors import ExitCode, Node0Error
from gastown.roles import ROLES
from inference.swarm_args import add_swarm_arguments, swarm_peers

log = logging.getLogger("node0-inference")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="node0-inference",
        description="Talk to a model served by a node0 swarm over stdin/stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_swarm_arguments(p)
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
        choices=ROLES,
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
    from inference.conversation import default_transcript_path

    return default_transcript_path(args.rig)


async def run_session(args: argparse.Namespace) -> int:
    """The session: settings from the flags, one conversation, prompts from stdin."""
    from inference.conversation import ConversationEngine, GenerationSettings
    from inference.rag_context import ContextScope, RagContext
    from inference.swarm_client import SwarmClient
    from inference.transcript import SessionTranscript

    settings = GenerationSettings.create(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    adapters = tuple(a.strip() for a in args.adapters.split(",") if a.strip())
    scope = ContextScope(
        rig=args.rig if args.rig != "local" else None,
        role=args.role,
        budget_tokens=args.rag_budget or None,
    )
    transcript = SessionTranscript(
        rig=args.rig, role=args.role, agent=args.agent, bead_id=args.bead, task=args.task
    )
    rag = None if args.rag == "off" else RagContext.open(args.rag)
    client = conversation = None
    try:
        peers = swarm_peers(args)
        client = SwarmClient(args.model, peers)
        engine = ConversationEngine.connect(
            client,
            prompt_format=args.prompt_format,
            max_length=args.max_length,
            step_timeout=args.step_timeout,
            rag=rag,
        )
        conversation = engine.conversation(
            system=args.system, adapters=adapters, scope=scope, transcript=transcript
        )
        await conversation.open()  # fail fast (stages, adapters) before reading stdin
        await _converse(conversation, settings, Output(args.json), args.delimiter)
    finally:
        if conversation is not None:
            await conversation.close()
        if client is not None:
            client.close()
        if rag is not None:
            rag.close()
        path = _transcript_path(args)
        if conversation is not None and path is not None:
            if conversation.save_transcript(path, outcome=args.outcome) is not None:
                log.info("transcript appended to %s", path)
    return 0


async def _converse(conversation, settings, out: Output, delimiter: str | None) -> None:
    """One turn per prompt on stdin; a failed turn is reported and the session goes on."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    for prompt in read_prompts(sys.stdin, delimiter):
        try:
            result = await conversation.send(prompt, settings, on_text=out.text)
        except Node0Error as exc:
            out.error(exc, int(exc.exit_code))
        else:
            out.done(result)
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)


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
