"""A bash command line as the simple commands it runs, for the guardrails to judge.

Not a bash parser: enough of one to see every command a line starts, without running it.
The line is tokenized with :mod:`shlex` (POSIX quoting, backslash escapes) and split at
``;``, ``&&``, ``||``, ``|``, ``&``, newlines and parentheses; redirections and their targets
are dropped; what runs inside ``$(…)``, backticks, ``bash -c``/``sh -c`` strings and ``eval``
is parsed the same way, recursively; wrappers that run another command (``env``, ``nohup``,
``timeout 5``, ``xargs``, …) are peeled off so the command they run is judged.

Where the tokenizer cannot tell a quoted ``";"`` from a separator, it splits: a guardrail then
sees one command too many, never one too few. A line that does not tokenize (an unclosed
quote) raises :class:`ShellSyntaxError`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

PUNCTUATION = ";&|()<>\n"
MAX_DEPTH = 8  # nested `bash -c "sh -c '…'"` strings followed before giving up

SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh"})
KEYWORDS = frozenset({"!", "{", "}", "if", "then", "elif", "else", "do", "while", "until", "time"})
# wrapper -> options that take a value (the wrapper's other options are flags)
WRAPPERS: dict[str, frozenset[str]] = {
    "command": frozenset(),
    "builtin": frozenset(),
    "exec": frozenset({"-a"}),
    "nohup": frozenset(),
    "setsid": frozenset(),
    "env": frozenset({"-u", "-C", "-S", "--unset", "--chdir"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "xargs": frozenset({"-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file"}),
}
WRAPPER_POSITIONALS = {"timeout": 1}  # positional arguments before the command (the duration)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SUBSTITUTION = re.compile(r"\$\((.*)\)", re.DOTALL)  # inside one word: "$(…)"
BACKTICKS = re.compile(r"`([^`]*)`")  # on the whole line: `…` may hold spaces


class ShellSyntaxError(ValueError):
    """The line does not tokenize (e.g. an unclosed quote)."""


@dataclass(frozen=True)
class SimpleCommand:
    """One command a line runs.

    Attributes:
        words: the command name (as written, e.g. ``/usr/bin/rm``) and its arguments, quotes
            removed, redirections dropped.
        via_xargs: the command's arguments also come from its input (``… | xargs rm``), so
            ``words`` are not all of them.
    """

    words: tuple[str, ...]
    via_xargs: bool = False

    @property
    def name(self) -> str:
        """The command's base name (``/usr/bin/rm`` -> ``rm``)."""
        return self.words[0].rsplit("/", 1)[-1]

    @property
    def args(self) -> tuple[str, ...]:
        return self.words[1:]

    def __str__(self) -> str:
        return shlex.join(self.words)


def simple_commands(line: str, *, depth: int = 0) -> list[SimpleCommand]:
    """Every simple command ``line`` runs (nested ones in no particular order).

    Raises:
        ShellSyntaxError: the line (or a nested string) does not tokenize, or nests deeper
            than :data:`MAX_DEPTH`.
    """
    if depth > MAX_DEPTH:
        raise ShellSyntaxError(f"commands nested more than {MAX_DEPTH} deep")
    out: list[SimpleCommand] = []
    for match in BACKTICKS.finditer(line):
        out.extend(simple_commands(match.group(1), depth=depth + 1))
    for words in _segments(_tokens(line)):
        for word in words:  # an unquoted $( is split off by the tokenizer; a quoted one is here
            for match in SUBSTITUTION.finditer(word):
                out.extend(simple_commands(match.group(1), depth=depth + 1))
        command = _peel(words)
        if command is None:
            continue
        out.append(command)
        script = _nested_script(command)
        if script is not None:
            out.extend(simple_commands(script, depth=depth + 1))
    return out


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=PUNCTUATION)
    lexer.whitespace = " \t\r"  # a newline separates commands: it is punctuation here
    lexer.whitespace_split = True
    lexer.commenters = ""  # a `#` comment could hide the newline that ends it
    try:
        return list(lexer)
    except ValueError as exc:
        raise ShellSyntaxError(str(exc)) from None


def _segments(tokens: list[str]) -> list[list[str]]:
    """The words of each command between separators, redirections and their targets left out."""
    segments: list[list[str]] = [[]]
    skip_target = False
    for token in tokens:
        if token and all(c in PUNCTUATION for c in token):
            # a run of punctuation may hold a separator and a redirection at once (`;>f`)
            redirect = "<" in token or ">" in token
            separates = token != ">|" and (
                any(c in token for c in ";|()\n") or "&&" in token or not redirect
            )
            if separates:
                segments.append([])
            skip_target = redirect and "(" not in token  # `<(cmd)` has no target word
            continue
        if skip_target:
            skip_target = False
            continue
        segments[-1].append(token)
    return [s for s in segments if s]


def _peel(words: list[str]) -> SimpleCommand | None:
    """The command ``words`` run: assignments, keywords and wrappers peeled off."""
    i, via_xargs = 0, False
    while i < len(words):
        word = words[i]
        name = word.rsplit("/", 1)[-1]
        if word in KEYWORDS or ASSIGNMENT.match(word):
            i += 1
        elif name in WRAPPERS:
            via_xargs |= name == "xargs"
            i = _skip_wrapper_options(words, i + 1, WRAPPERS[name])
            i += WRAPPER_POSITIONALS.get(name, 0)
        else:
            return SimpleCommand(tuple(words[i:]), via_xargs)
    return None


def _skip_wrapper_options(words: list[str], i: int, with_value: frozenset[str]) -> int:
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        if words[i] == "--":
            return i + 1
        i += 2 if words[i] in with_value else 1
    while i < len(words) and ASSIGNMENT.match(words[i]):  # env's NAME=value
        i += 1
    return i


def _nested_script(command: SimpleCommand) -> str | None:
    """The script a ``bash -c SCRIPT`` or ``eval WORDS`` runs (None: it runs none)."""
    if command.name == "eval":
        return " ".join(command.args)
    if command.name not in SHELLS:
        return None
    args = command.args
    for i, arg in enumerate(args):
        if arg == "--" or not arg.startswith("-"):
            return None  # a script file: its commands are not on this line
        if "c" in arg.lstrip("-") and not arg.startswith("--"):
            return args[i + 1] if i + 1 < len(args) else None
    return None
