"""The command-line grammar of ``bd`` (beads) and ``gt`` (Gas Town), as documented.

When the real tools are not installed, the eval sandbox puts recording shims on ``PATH``
(:mod:`evaluation.shim`); both the shims and the scorers read an invocation with
:func:`parse`, so a call the real tool would reject (unknown subcommand, missing id, a priority
out of 0-4, a bad status) is a recorded error, never a silent success.

``bd``: ``create [TITLE] [--title T] [-t TYPE] [-p PRIO] [-d DESC] [-a WHO] [-l LABELS]
[--deps [TYPE:]ID,…] [--parent ID]``, ``update ID… [-s STATUS] [-p PRIO] [--title T] [-a WHO]
[-d DESC] [--notes N]``, ``close ID… [-r REASON]``, ``reopen ID…``, ``dep add ISSUE
DEPENDS_ON [-t TYPE]``, ``dep remove ISSUE DEPENDS_ON``, ``dep tree ID``, ``list [-s] [-p]
[-t] [-a] [-l] [-n]``, ``ready [-p] [-a] [-n]``, ``show ID…``, ``blocked``, ``stats``; global
``--json`` and ``--actor``.

``gt``: ``prime``, ``hook``, ``sling BEAD [TARGET]``, ``nudge AGENT [MESSAGE]``, ``mail send
ADDR -s SUBJ -m MSG``, ``mail inbox``, ``done``, ``handoff``, ``status``, ``convoy create
NAME [BEAD…]``, ``convoy list``, ``polecat list``, ``rig list``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

ISSUE_TYPES = ("bug", "feature", "task", "epic", "chore")
STATUSES = ("open", "in_progress", "blocked", "closed")
DEP_TYPES = ("blocks", "related", "parent-child", "discovered-from")


class GrammarError(ValueError):
    """An invocation the tool's grammar rejects."""


@dataclass(frozen=True)
class Invocation:
    """One parsed call: ``tool`` (bd/gt), ``command`` (e.g. ``create``, ``dep add``), the
    parsed arguments, and the error when it did not parse (then ``args`` is empty)."""

    tool: str
    argv: tuple[str, ...]
    command: str | None
    args: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit the process
        raise GrammarError(message)


def priority(value: str) -> int:
    """bd's priority: 0-4, also written P0-P4."""
    text = value.upper().removeprefix("P")
    if not text.isdigit() or not 0 <= int(text) <= 4:
        raise argparse.ArgumentTypeError(f"priority must be 0-4 (or P0-P4), got {value!r}")
    return int(text)


def _choice(options: tuple[str, ...]):
    def check(value: str) -> str:
        if value not in options:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return check


def _bd() -> _Parser:
    p = _Parser(prog="bd", add_help=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--actor", default=None)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("create", add_help=False)
    c.add_argument("title_arg", nargs="?", default=None)
    c.add_argument("--title", default=None)
    c.add_argument("-t", "--type", type=_choice(ISSUE_TYPES), default="task")
    c.add_argument("-p", "--priority", type=priority, default=2)
    c.add_argument("-d", "--description", default="")
    c.add_argument("-a", "--assignee", default=None)
    c.add_argument("-l", "--labels", default=None)
    c.add_argument("--deps", default=None)
    c.add_argument("--parent", default=None)
    c.add_argument("--json", action="store_true", dest="json_local")
    u = sub.add_parser("update", add_help=False)
    u.add_argument("ids", nargs="+")
    u.add_argument("-s", "--status", type=_choice(STATUSES), default=None)
    u.add_argument("-p", "--priority", type=priority, default=None)
    u.add_argument("--title", default=None)
    u.add_argument("-a", "--assignee", default=None)
    u.add_argument("-d", "--description", default=None)
    u.add_argument("--notes", default=None)
    u.add_argument("--json", action="store_true", dest="json_local")
    cl = sub.add_parser("close", add_help=False)
    cl.add_argument("ids", nargs="+")
    cl.add_argument("-r", "--reason", default=None)
    cl.add_argument("--json", action="store_true", dest="json_local")
    ro = sub.add_parser("reopen", add_help=False)
    ro.add_argument("ids", nargs="+")
    dep = sub.add_parser("dep", add_help=False)
    dsub = dep.add_subparsers(dest="dep_command", required=True, parser_class=_Parser)
    da = dsub.add_parser("add", add_help=False)
    da.add_argument("issue")
    da.add_argument("depends_on")
    da.add_argument("-t", "--type", type=_choice(DEP_TYPES), default="blocks")
    dr = dsub.add_parser("remove", add_help=False)
    dr.add_argument("issue")
    dr.add_argument("depends_on")
    dt = dsub.add_parser("tree", add_help=False)
    dt.add_argument("issue")
    for name in ("list", "ready"):
        q = sub.add_parser(name, add_help=False)
        q.add_argument("-p", "--priority", type=priority, default=None)
        q.add_argument("-a", "--assignee", default=None)
        q.add_argument("-n", "--limit", type=int, default=None)
        q.add_argument("--json", action="store_true", dest="json_local")
        if name == "list":
            q.add_argument("-s", "--status", type=_choice(STATUSES), default=None)
            q.add_argument("-t", "--type", type=_choice(ISSUE_TYPES), default=None)
            q.add_argument("-l", "--label", default=None)
    s = sub.add_parser("show", add_help=False)
    s.add_argument("ids", nargs="+")
    s.add_argument("--json", action="store_true", dest="json_local")
    sub.add_parser("blocked", add_help=False)
    sub.add_parser("stats", add_help=False)
    return p


def _gt() -> _Parser:
    p = _Parser(prog="gt", add_help=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in ("prime", "hook", "done", "handoff", "status"):
        sub.add_parser(name, add_help=False)
    s = sub.add_parser("sling", add_help=False)
    s.add_argument("bead")
    s.add_argument("target", nargs="?", default=None)
    n = sub.add_parser("nudge", add_help=False)
    n.add_argument("agent")
    n.add_argument("message", nargs="*")
    mail = sub.add_parser("mail", add_help=False)
    msub = mail.add_subparsers(dest="mail_command", required=True, parser_class=_Parser)
    send = msub.add_parser("send", add_help=False)
    send.add_argument("address")
    send.add_argument("-s", "--subject", required=True)
    send.add_argument("-m", "--message", required=True)
    msub.add_parser("inbox", add_help=False)
    convoy = sub.add_parser("convoy", add_help=False)
    csub = convoy.add_subparsers(dest="convoy_command", required=True, parser_class=_Parser)
    cc = csub.add_parser("create", add_help=False)
    cc.add_argument("name")
    cc.add_argument("beads", nargs="*")
    csub.add_parser("list", add_help=False)
    for group in ("polecat", "rig"):
        g = sub.add_parser(group, add_help=False)
        gsub = g.add_subparsers(dest=f"{group}_command", required=True, parser_class=_Parser)
        gsub.add_parser("list", add_help=False)
    return p


_PARSERS = {"bd": _bd, "gt": _gt}
_SUBCOMMANDS = {"dep": "dep_command", "mail": "mail_command", "convoy": "convoy_command",
                "polecat": "polecat_command", "rig": "rig_command"}  # fmt: skip


def parse(tool: str, argv: list[str] | tuple[str, ...]) -> Invocation:
    """``tool argv…`` read against the tool's grammar (never raises for a bad call)."""
    argv = tuple(argv)
    if tool not in _PARSERS:
        return Invocation(tool, argv, None, error=f"unknown tool {tool!r}")
    try:
        ns = _PARSERS[tool]().parse_args(list(argv))
    except (GrammarError, argparse.ArgumentError) as exc:
        return Invocation(tool, argv, None, error=str(exc))
    args = vars(ns)
    command = args.pop("command")
    if command in _SUBCOMMANDS:
        command = f"{command} {args.pop(_SUBCOMMANDS[command])}"
    args["json"] = bool(args.pop("json", False) or args.pop("json_local", False))
    if command == "create":
        title = args.pop("title_arg")
        if title and args["title"]:
            return Invocation(tool, argv, None, error="give the title once (TITLE or --title)")
        args["title"] = title or args["title"]
        if not args["title"]:
            return Invocation(tool, argv, None, error="create needs a title")
    return Invocation(tool, argv, command, args)


def parse_deps(value: str | None) -> list[tuple[str, str]]:
    """``--deps`` of ``bd create``: ``[TYPE:]ID,…`` -> [(depends_on_id, type)]."""
    out = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        kind, _, target = item.rpartition(":")
        if kind and kind not in DEP_TYPES:
            raise GrammarError(f"dependency type {kind!r} is not one of {', '.join(DEP_TYPES)}")
        out.append((target, kind or "blocks"))
    return out
