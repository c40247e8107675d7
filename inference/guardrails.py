"""Guardrails of the agent tool loop: which commands a model's ``bash`` calls may not run, and
the loop's limits, as a policy file (``configs/guardrails/default.yaml``).

A command is judged before it runs, on the simple commands it would start
(:mod:`inference.shell_parse`: ``;``, ``&&``, ``|``, newlines, ``bash -c`` strings, ``$(…)``),
never by substring: ``echo pkill`` runs, ``bash -c "sudo ls"`` does not. A refused command is a
:class:`Denial` with a machine-readable rule id; the tool loop hands its reason to the model as
the tool's result and counts it. The rules (see docs/tool_loop.md):

- ``broad_kill``: ``pkill``, ``killall``, ``kill -1`` (every process the user owns).
- ``force_push``: ``git push --force``/``-f``/``+refspec`` without ``--force-with-lease``.
- ``delete_outside_workdir``: ``rm``, ``rmdir``, ``unlink``, ``shred`` or ``find -delete`` on a
  path that resolves outside the working directory (``..``, absolute paths, ``~``, symlinked
  directories), the working directory itself, a path the policy cannot resolve (``$VAR``), or
  paths fed by ``xargs``.
- ``sudo``: ``sudo``, ``doas``, ``su``, ``pkexec``.
- ``denied_command``: a command named in the policy's ``denied_commands``.
- ``unparsable``: a line that does not tokenize (always on: what cannot be read is not run).
- ``outside_workdir``: ``read_file``/``write_file`` on a path outside the working directory
  (always on).

The guardrails catch an agent's mistakes, not a determined adversary: a command name built from
a variable, an alias or a script the command runs is not looked into.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from base.config_loader import load_yaml_config
from inference.shell_parse import ShellSyntaxError, SimpleCommand, simple_commands

DEFAULT_GUARDRAILS = (
    Path(__file__).resolve().parent.parent / "configs" / "guardrails" / "default.yaml"
)

Rule = Literal["broad_kill", "force_push", "delete_outside_workdir", "sudo"]
RULES: tuple[Rule, ...] = ("broad_kill", "force_push", "delete_outside_workdir", "sudo")

BROAD_KILLS = frozenset({"pkill", "killall", "killall5"})
ESCALATIONS = frozenset({"sudo", "doas", "su", "pkexec"})
DELETERS = frozenset({"rm", "rmdir", "unlink", "shred"})


class GuardrailsConfig(BaseModel):
    """The tool loop's policy: refused commands and limits (``configs/guardrails/*.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deny: tuple[Rule, ...] = Field(
        default=RULES, description="Rules whose commands are refused (ids in the module doc)."
    )
    denied_commands: tuple[str, ...] = Field(
        default=(), description="Command names refused outright (rule id denied_command)."
    )
    max_steps: int = Field(
        default=8, ge=1, le=1000, description="Model replies per prompt before the loop stops."
    )
    time_limit_s: float = Field(
        default=600.0, gt=0, description="Seconds per prompt (model and tools) before it stops."
    )
    command_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds a bash command may run before its group is killed."
    )
    max_output_bytes: int = Field(
        default=16384, ge=256, description="Bytes of a tool's output shown to the model."
    )


def load_guardrails(path: str | Path | None = None) -> tuple[GuardrailsConfig, Path, str]:
    """The policy file at ``path`` (None: ``configs/guardrails/default.yaml``), with its path
    and sha256 (for the banner).

    Raises:
        ConfigError: unreadable, not YAML, an unknown key or rule, or a value out of range.
    """
    path = Path(path) if path is not None else DEFAULT_GUARDRAILS
    config, sha256 = load_yaml_config(path, GuardrailsConfig)
    return config, path, sha256


@dataclass(frozen=True)
class Denial:
    """A refused tool call: the rule that refused it and why (shown to the model)."""

    rule: str
    reason: str

    def message(self) -> str:
        """The tool result the model sees."""
        return f"refused by guardrail {self.rule}: {self.reason}"


class CommandPolicy:
    """Judges bash command lines before they run.

    Args:
        deny: the rules in force (a subset of :data:`RULES`).
        denied_commands: command names refused outright.
    """

    def __init__(self, deny: frozenset[str] = frozenset(RULES), denied_commands=()) -> None:
        self.deny = frozenset(deny)
        self.denied_commands = frozenset(denied_commands)

    @classmethod
    def from_config(cls, config: GuardrailsConfig) -> CommandPolicy:
        return cls(frozenset(config.deny), frozenset(config.denied_commands))

    def check(self, line: str, workdir: str | Path) -> Denial | None:
        """The first rule ``line`` breaks when run in ``workdir`` (None: it may run)."""
        try:
            commands = simple_commands(line)
        except ShellSyntaxError as exc:
            return Denial("unparsable", f"the command does not parse ({exc})")
        root = os.path.realpath(workdir)
        cwds: list[str | None] = [root]  # every directory a later command may run in
        for command in commands:
            denial = self._judge(command, root, cwds)
            if denial is not None:
                return denial
            if command.name in ("cd", "pushd"):
                cwds.append(_cd_target(command, cwds[-1]))
        return None

    def _judge(self, command: SimpleCommand, root: str, cwds: list[str | None]) -> Denial | None:
        name = command.name
        if name in self.denied_commands:
            return Denial("denied_command", f"`{name}` is not allowed by the policy")
        if "sudo" in self.deny and name in ESCALATIONS:
            return Denial("sudo", f"`{name}` runs as another user; tools run as you, no more")
        if "broad_kill" in self.deny and (name in BROAD_KILLS or _kills_everything(command)):
            return Denial(
                "broad_kill",
                f"`{command}` kills processes by name or all of them; "
                "kill the process ids you started",
            )
        if "force_push" in self.deny and _force_push(command):
            return Denial(
                "force_push",
                "a forced push rewrites others' history; use --force-with-lease",
            )
        if "delete_outside_workdir" in self.deny:
            targets = _deletion_targets(command)
            if targets is not None:
                # `find . -delete` empties the working directory, which is its own
                return _outside(command, targets, root, cwds, own_root=command.name == "find")
        return None


def _kills_everything(command: SimpleCommand) -> bool:
    """``kill`` aimed at pid -1 (every process the user may signal)."""
    if command.name != "kill":
        return False
    args = list(command.args)
    if args and args[0].startswith("-") and args[0] != "--":
        args = args[2:] if args[0] in ("-s", "-n") else args[1:]  # the signal
    return "-1" in [a for a in args if a != "--"]


def _force_push(command: SimpleCommand) -> bool:
    if command.name != "git":
        return False
    args = list(command.args)
    while args and args[0].startswith("-"):  # git's own options: -C dir, -c k=v, --git-dir=…
        args = args[2:] if args[0] in ("-C", "-c") else args[1:]
    if not args or args[0] != "push":
        return False
    rest = args[1:]
    if any(a.startswith("--force-with-lease") for a in rest):
        return False
    for arg in rest:
        if arg == "--force" or (arg.startswith("-") and not arg.startswith("--") and "f" in arg):
            return True
        if arg.startswith("+"):  # a forced refspec
            return True
    return False


def _deletion_targets(command: SimpleCommand) -> list[str] | None:
    """The paths a deleting command removes (None: it deletes nothing)."""
    if command.name in DELETERS:
        paths, options = [], True
        for arg in command.args:
            if options and arg == "--":
                options = False
            elif options and arg.startswith("-") and arg != "-":
                continue
            else:
                paths.append(arg)
        return paths
    if command.name == "find":
        args = command.args
        deletes = "-delete" in args or any(
            a in ("-exec", "-execdir", "-ok", "-okdir")
            and i + 1 < len(args)
            and args[i + 1].rsplit("/", 1)[-1] in DELETERS
            for i, a in enumerate(args)
        )
        if not deletes:
            return None
        starts = []
        for arg in args:
            if arg.startswith("-") or arg in ("(", "!"):
                break
            starts.append(arg)
        return starts or ["."]
    return None


def _outside(
    command: SimpleCommand,
    targets: list[str],
    root: str,
    cwds: list[str | None],
    *,
    own_root: bool = False,
) -> Denial | None:
    def deny(why: str) -> Denial:
        return Denial("delete_outside_workdir", f"`{command}` {why}")

    if command.via_xargs:
        return deny("deletes paths read from its input; name them literally")
    for target in targets:
        if "$" in target:
            return deny(f"deletes {target!r}, which the policy cannot resolve; name it literally")
        for cwd in cwds:  # judged in every directory an earlier `cd` may have left
            if cwd is None and not target.startswith(("/", "~")):
                return deny(f"deletes {target!r} after a `cd` the policy cannot follow")
            where = _resolve(target, cwd or root)
            if where == root and not own_root:
                return deny("deletes the working directory itself")
            if where != root and not where.startswith(root + os.sep):
                return deny(f"deletes {target!r}, which is outside the working directory")
    return None


def _resolve(path: str, cwd: str) -> str:
    """Where ``path`` points from ``cwd``, symlinked directories followed (the last component
    is kept as is: ``rm link`` removes the link, not its target)."""
    full = os.path.join(cwd, os.path.expanduser(path))
    head, tail = os.path.split(full.rstrip("/") or "/")
    if path.endswith("/") or tail in ("", ".", ".."):
        return os.path.realpath(full)
    return os.path.join(os.path.realpath(head), tail)


def _cd_target(command: SimpleCommand, cwd: str | None) -> str | None:
    """The directory a ``cd`` moves to (None: one the policy cannot tell)."""
    args = [a for a in command.args if a == "-" or not a.startswith("-")]
    if not args:
        return os.path.realpath(os.path.expanduser("~"))
    if args[0] == "-" or "$" in args[0] or (cwd is None and not args[0].startswith(("/", "~"))):
        return None
    return os.path.realpath(os.path.join(cwd or "/", os.path.expanduser(args[0])))
