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

With ``--tools bash[,read_file,write_file]`` each prompt runs the agent tool loop
(:mod:`inference.tool_loop`, docs/tool_loop.md): the model's calls run in ``--workdir`` under the
guardrails policy (``--guardrails``, shown in the startup lines on stderr) until it answers
without a call or a limit stops it. The answer's text streams as before; ``--json`` adds
``tool_call`` and ``tool_result`` events, and ``done`` says what ended the loop.

This module is only the front end (flags, the stdin/stdout protocol); the turns run on the
conversation engine, :mod:`inference.conversation`, and the tool loop.
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
    _add_tool_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    return p


def _tool_names(value: str) -> tuple[str, ...]:
    from inference.tools import TOOLS

    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown tools {unknown}; known: {','.join(TOOLS)}")
    return names


def _add_tool_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("agent tools (docs/tool_loop.md)")
    g.add_argument(
        "--tools",
        type=_tool_names,
        default=(),
        help="run the tool loop with these tools (comma-separated: bash,read_file,write_file); "
        "none = plain conversation",
    )
    g.add_argument(
        "--workdir", type=Path, default=Path("."), help="where tools run and files resolve"
    )
    g.add_argument(
        "--guardrails",
        type=Path,
        default=None,
        help="guardrails policy YAML (default: configs/guardrails/default.yaml)",
    )
    g.add_argument(
        "--max-steps", type=int, default=None, help="model replies per prompt (default: policy's)"
    )
    g.add_argument(
        "--tool-timeout",
        type=float,
        default=None,
        help="seconds a bash command may run (default: policy's)",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds per prompt, model and tools together (default: policy's)",
    )


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
        self._break = False  # plain text after a tool call starts on a new line
        self._column0 = True

    def _line(self, event: dict) -> None:
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def text(self, chunk: str) -> None:
        if self.as_json:
            self._line({"type": "token", "text": chunk})
        else:
            if self._break and not self._column0:
                sys.stdout.write("\n")
            self._break = False
            sys.stdout.write(chunk)
            sys.stdout.flush()
            self._column0 = chunk.endswith("\n")

    def event(self, event) -> None:
        """A tool-loop event: text to stdout, calls and results as events (plain: on stderr)."""
        from inference.tool_loop import TextEvent, ToolCallEvent

        if isinstance(event, TextEvent):
            self.text(event.text)
            return
        if self.as_json:
            self._line(event.to_json())
            return
        self._break = True
        if isinstance(event, ToolCallEvent):
            print(f"[tool] {event.call.name} {event.call.arguments}", file=sys.stderr, flush=True)
            return
        o = event.outcome
        status = (
            f"refused ({o.denied})"
            if o.denied
            else "timed out, killed"
            if o.timed_out
            else f"exit {o.exit_code}"
        )
        size = len(o.output.encode()) + o.truncated_bytes
        print(f"[tool] {event.call.name}: {status}, {size} bytes", file=sys.stderr, flush=True)

    def loop_done(self, result) -> None:
        """The end of a prompt's tool loop (``done``, with what ended it)."""
        replies = result.replies
        if self.as_json:
            self._line(
                {
                    "type": "done",
                    "finish_reason": replies[-1].finish_reason if replies else None,
                    "stop_reason": result.stop_reason,
                    "steps": result.steps,
                    "tool_calls": len(result.calls),
                    "denied": result.denied,
                    "prompt_tokens": replies[-1].prompt_tokens if replies else 0,
                    "completion_tokens": sum(len(r.token_ids) for r in replies),
                    "reused_tokens": sum(r.reused_tokens for r in replies),
                    "time_to_first_token_s": round(replies[0].time_to_first_token, 4)
                    if replies
                    else None,
                    "elapsed_s": round(result.elapsed, 4),
                }
            )
            return
        sys.stdout.write("\n")
        sys.stdout.flush()
        self._column0, self._break = True, False
        if result.stop_reason != "answer":
            print(
                f"node0-inference: the tool loop stopped at its {result.stop_reason} "
                f"({result.steps} steps, {len(result.calls)} tool calls) without an answer",
                file=sys.stderr,
                flush=True,
            )

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
    from inference.registry_models import load_on_swarm, resolve_registered
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
    tools = _tool_setup(args) if args.tools else None  # a bad policy fails before connecting
    rag = None if args.rag == "off" else RagContext.open(args.rag)
    client = conversation = agent = None
    try:
        peers = swarm_peers(args)
        registered = resolve_registered(args.model)  # a registry version: base + its adapter
        client = SwarmClient(registered.base_model if registered else args.model, peers)
        if registered is not None:
            client.wait_for_route()
            load_on_swarm(client.records(), registered)  # every replica, not just the route's
            adapters = (registered.adapter, *(a for a in adapters if a != registered.adapter))
        engine = ConversationEngine.connect(
            client,
            prompt_format=args.prompt_format,
            max_length=args.max_length,
            step_timeout=args.step_timeout,
            rag=rag,
        )
        if tools is not None:
            # the agent holds the history and the transcript; the conversation is its session
            conversation = engine.conversation(adapters=adapters)
            agent = _tool_agent(args, tools, engine, conversation, settings, scope, transcript)
        else:
            conversation = engine.conversation(
                system=args.system, adapters=adapters, scope=scope, transcript=transcript
            )
        await conversation.open()  # fail fast (stages, adapters) before reading stdin
        if agent is not None:
            await _converse_with_tools(agent, Output(args.json), args.delimiter)
        else:
            await _converse(conversation, settings, Output(args.json), args.delimiter)
    finally:
        if conversation is not None:
            await conversation.close()
        if client is not None:
            client.close()
        if rag is not None:
            rag.close()
        path = _transcript_path(args)
        session = agent if agent is not None else conversation
        if session is not None and path is not None:
            if session.save_transcript(path, outcome=args.outcome) is not None:
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


def _tool_setup(args: argparse.Namespace):
    """The toolbox and loop limits of ``--tools``, from the policy file and the flags; prints
    the startup lines (policy path and sha256, tools, rules, limits) on stderr."""
    from base.banner import print_banner
    from inference.guardrails import CommandPolicy, load_guardrails
    from inference.tool_loop import LoopLimits
    from inference.tools import Toolbox, ToolLimits

    policy, path, sha256 = load_guardrails(args.guardrails)
    if not args.workdir.is_dir():
        raise Node0Error(f"--workdir {args.workdir} is not a directory")
    for flag, value in (("--max-steps", args.max_steps), ("--tool-timeout", args.tool_timeout),
                        ("--time-limit", args.time_limit)):  # fmt: skip
        if value is not None and value <= 0:
            raise Node0Error(f"{flag} must be positive, got {value}")
    limits = LoopLimits(
        max_steps=args.max_steps or policy.max_steps,
        time_limit_s=args.time_limit or policy.time_limit_s,
    )
    tool_limits = ToolLimits(
        command_timeout_s=args.tool_timeout or policy.command_timeout_s,
        max_output_bytes=policy.max_output_bytes,
    )
    toolbox = Toolbox(
        args.workdir, args.tools, policy=CommandPolicy.from_config(policy), limits=tool_limits
    )
    print_banner(
        "inference --tools",
        path,
        sha256,
        [
            f"tools: {', '.join(args.tools)} in {toolbox.workdir}",
            f"guardrails: deny {', '.join(policy.deny) or 'nothing'}; "
            f"denied commands: {', '.join(policy.denied_commands) or 'none'}",
            f"limits: {limits.max_steps} steps and {limits.time_limit_s:g} s per prompt, "
            f"{tool_limits.command_timeout_s:g} s per command, "
            f"{tool_limits.max_output_bytes} bytes of output per call",
        ],
    )
    return toolbox, limits


def _tool_agent(args, tools, engine, conversation, settings, scope, transcript):
    from inference.tool_agent import ToolAgent
    from inference.tool_loop import conversation_model

    toolbox, limits = tools
    augment = None
    if engine.rag is not None:  # retrieval for the prompt, not for each tool result

        async def augment(prompt: str) -> str:
            return (await asyncio.to_thread(engine.augment, prompt, scope)).text

    return ToolAgent(
        conversation_model(conversation, settings),
        toolbox,
        engine.tool_format,
        system=args.system,
        limits=limits,
        transcript=transcript,
        augment=augment,
    )


async def _converse_with_tools(agent, out: Output, delimiter: str | None) -> None:
    """One tool loop per prompt on stdin; a failed prompt is reported and the session goes on."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    for prompt in read_prompts(sys.stdin, delimiter):
        try:
            result = await agent.ask(prompt, on_event=out.event)
        except Node0Error as exc:
            out.error(exc, int(exc.exit_code))
        else:
            out.loop_done(result)
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
