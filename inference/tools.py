"""The tools an agent may call in the tool loop: ``bash``, ``read_file``, ``write_file``.

Each is a :class:`~inference.tool_calls.ToolSpec` (a JSON schema the model is offered) and an
executor in :class:`Toolbox`, which runs a call in one working directory under the guardrails
(:mod:`inference.guardrails`) and returns a :class:`ToolOutcome`:

- ``bash``: the command line is judged by the :class:`~inference.guardrails.CommandPolicy`
  first; then it runs as ``bash -c`` in the working directory, in a new session (its own
  process group), stdin from ``/dev/null``, stdout and stderr together. At the timeout, or
  when the call is cancelled, the whole group is killed (``os.killpg`` on that group only);
  when the shell exits, whatever it left running in its group is killed too, so no tool call
  outlives its step.
- ``read_file`` / ``write_file``: paths relative to the working directory, refused when they
  resolve outside it (symlinks followed).

Output longer than ``max_output_bytes`` keeps its head and tail around a visible marker
``[… N bytes truncated …]``; the rest is read and dropped, never held.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from base.atomic import atomic_write
from inference.guardrails import CommandPolicy, Denial
from inference.tool_calls import ToolCall, ToolSpec

BASH = ToolSpec(
    "bash",
    "Run a bash command in the working directory; returns its output (stdout and stderr) "
    "and exit code. Nothing can be typed into it: stdin is empty.",
    {
        "type": "object",
        "properties": {"command": {"type": "string", "description": "the command line"}},
        "required": ["command"],
    },
)
READ_FILE = ToolSpec(
    "read_file",
    "Read a text file in the working directory.",
    {
        "type": "object",
        "properties": {"path": {"type": "string", "description": "relative to the working dir"}},
        "required": ["path"],
    },
)
WRITE_FILE = ToolSpec(
    "write_file",
    "Write a text file in the working directory (replacing it; parent folders are created).",
    {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "relative to the working dir"},
            "content": {"type": "string", "description": "the file's whole new text"},
        },
        "required": ["path", "content"],
    },
)
TOOLS: dict[str, ToolSpec] = {t.name: t for t in (BASH, READ_FILE, WRITE_FILE)}
"""Every tool by name, in the order they are offered."""

CLOSE_GRACE_S = 2.0  # for the rest of the output once the group is killed


@dataclass(frozen=True)
class ToolOutcome:
    """What one tool call did.

    Attributes:
        output: what the tool printed (truncated, with the marker), or why it was refused.
        exit_code: the command's exit status (file tools: 0 done, 1 failed); None when the
            call was refused or killed.
        denied: the guardrail rule that refused the call (None: it ran).
        timed_out: the command was killed at its timeout.
        truncated_bytes: bytes of output left out of ``output``.
    """

    output: str
    exit_code: int | None = 0
    denied: str | None = None
    timed_out: bool = False
    truncated_bytes: int = 0

    @classmethod
    def refused(cls, denial: Denial) -> ToolOutcome:
        return cls(denial.message(), exit_code=None, denied=denial.rule)

    def model_text(self) -> str:
        """The tool result the model reads: the output, and the exit status unless it is 0."""
        text = self.output.rstrip("\n")
        if self.denied is not None or self.exit_code == 0:
            return text
        status = "[timed out: killed]" if self.timed_out else f"[exit code {self.exit_code}]"
        return f"{text}\n{status}" if text else status


@dataclass(frozen=True)
class ToolLimits:
    """Per-call limits: seconds a command may run, bytes of output shown to the model."""

    command_timeout_s: float = 60.0
    max_output_bytes: int = 16384


class Toolbox:
    """Executes tool calls in one working directory under one command policy.

    Args:
        workdir: where commands run and file paths are resolved (must exist).
        names: the tools offered, in order (each a key of :data:`TOOLS`).
        policy: judges bash command lines (default: every rule on).
        limits: timeout and output size per call.
        env: the environment commands run with (None: this process's).
        shell: the argv a command line is appended to (default ``bash -c``; a sandbox puts
            its launcher in front, e.g. the eval suite's mount and network namespace).
    """

    def __init__(
        self,
        workdir: str | Path,
        names: Sequence[str] = ("bash",),
        *,
        policy: CommandPolicy | None = None,
        limits: ToolLimits = ToolLimits(),
        env: Mapping[str, str] | None = None,
        shell: Sequence[str] = ("bash", "-c"),
    ) -> None:
        unknown = [n for n in names if n not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tools {unknown}; known: {', '.join(TOOLS)}")
        self.workdir = Path(workdir).resolve()
        if not self.workdir.is_dir():
            raise ValueError(f"working directory {workdir} does not exist")
        self.specs: tuple[ToolSpec, ...] = tuple(TOOLS[n] for n in dict.fromkeys(names))
        self.policy = policy or CommandPolicy()
        self.limits = limits
        self.env = dict(env) if env is not None else None
        self.shell = tuple(shell)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(s.name for s in self.specs)

    async def run(self, call: ToolCall, *, timeout: float | None = None) -> ToolOutcome:
        """Execute ``call``; ``timeout`` may shorten the command timeout (a loop's deadline)."""
        args = call.argument_object()
        if call.name not in self.names:
            return ToolOutcome(f"error: no tool named {call.name!r}", exit_code=2)
        required = TOOLS[call.name].parameters.get("required", [])
        missing = [k for k in required if not isinstance(args.get(k), str)]
        if missing:
            return ToolOutcome(
                f"error: {call.name} needs string argument(s) {', '.join(missing)}", exit_code=2
            )
        if call.name == "bash":
            limit = self.limits.command_timeout_s
            return await self.bash(args["command"], min(limit, timeout or limit))
        if call.name == "read_file":
            return await asyncio.to_thread(self.read_file, args["path"])
        return await asyncio.to_thread(self.write_file, args["path"], args["content"])

    async def bash(self, command: str, timeout: float) -> ToolOutcome:
        denial = self.policy.check(command, self.workdir)
        if denial is not None:
            return ToolOutcome.refused(denial)
        loop = asyncio.get_running_loop()
        output = _Capped(self.limits.max_output_bytes)
        transport, proc = await loop.subprocess_exec(
            lambda: _Command(output),
            *self.shell,
            command,
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        except TimeoutError:
            timed_out = True
        finally:
            _kill_group(transport.get_pid())  # the timed-out command, or what the shell left
            try:  # the group is gone, so the pipe closes; a process that left it may not
                await asyncio.wait_for(asyncio.shield(proc.closed), CLOSE_GRACE_S)
            except TimeoutError:
                pass
            transport.close()
        text, cut = output.text()
        if timed_out:
            return ToolOutcome(text, exit_code=None, timed_out=True, truncated_bytes=cut)
        return ToolOutcome(text, exit_code=transport.get_returncode(), truncated_bytes=cut)

    def read_file(self, path: str) -> ToolOutcome:
        where = self._inside(path)
        if isinstance(where, Denial):
            return ToolOutcome.refused(where)
        limit = self.limits.max_output_bytes
        try:
            with open(where, "rb") as handle:
                data = handle.read(limit)
                cut = max(0, os.fstat(handle.fileno()).st_size - len(data))
        except OSError as exc:
            return ToolOutcome(f"error: cannot read {path}: {exc.strerror}", exit_code=1)
        text = data.decode(errors="replace")
        if cut:
            text += f"\n[… {cut} bytes truncated …]"
        return ToolOutcome(text, truncated_bytes=cut)

    def write_file(self, path: str, content: str) -> ToolOutcome:
        where = self._inside(path)
        if isinstance(where, Denial):
            return ToolOutcome.refused(where)
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(where, content.encode())
        except OSError as exc:
            return ToolOutcome(f"error: cannot write {path}: {exc.strerror}", exit_code=1)
        return ToolOutcome(f"wrote {len(content.encode())} bytes to {path}")

    def _inside(self, path: str) -> Path | Denial:
        """``path`` resolved in the working directory, or the denial of a path outside it."""
        where = Path(os.path.realpath(self.workdir / os.path.expanduser(path)))
        if where == self.workdir or self.workdir in where.parents:
            return where
        return Denial("outside_workdir", f"{path!r} is outside the working directory")


class _Capped:
    """A byte stream's head and tail within ``limit`` bytes, and how many were dropped."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        self.head += data[:room]
        self.tail += data[room:] if room > 0 else data
        del self.tail[: max(0, len(self.tail) - self.tail_limit)]

    def text(self) -> tuple[str, int]:
        """The kept text, with the marker where bytes were left out, and how many."""
        cut = self.total - len(self.head) - len(self.tail)
        if not cut:
            return bytes(self.head + self.tail).decode(errors="replace"), 0
        head = bytes(self.head).decode(errors="replace")
        tail = bytes(self.tail).decode(errors="replace")
        return f"{head}\n[… {cut} bytes truncated …]\n{tail}", cut


class _Command(asyncio.SubprocessProtocol):
    """A command's output, and two moments: the shell exited; its pipe closed."""

    def __init__(self, output: _Capped) -> None:
        loop = asyncio.get_running_loop()
        self.output = output
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.output.add(data)

    def process_exited(self) -> None:
        # before its pipe closes: `proc.wait()` of asyncio.subprocess would also wait for
        # whatever the command left running with the pipe open
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
