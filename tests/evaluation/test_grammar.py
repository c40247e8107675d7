"""bd/gt grammar and the shim's effect on .beads/issues.jsonl (bd's export format)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.beads_store import BeadsCommandError, apply, current
from evaluation.grammar import parse
from gastown.beads import read_beads


@pytest.mark.parametrize(
    "argv, command, check",
    [
        (["create", "Fix it", "-t", "bug", "-p", "P0"], "create",
         {"title": "Fix it", "type": "bug", "priority": 0}),
        (["create", "--title", "X", "--deps", "blocks:gt-a"], "create", {"deps": "blocks:gt-a"}),
        (["update", "gt-a", "--status", "in_progress"], "update", {"status": "in_progress"}),
        (["close", "gt-a", "gt-b", "-r", "done"], "close", {"ids": ["gt-a", "gt-b"]}),
        (["dep", "add", "gt-a", "gt-b", "--type", "related"], "dep add", {"type": "related"}),
        (["--json", "ready"], "ready", {"json": True}),
        (["show", "gt-a", "--json"], "show", {"json": True}),
    ],
)  # fmt: skip
def test_bd_grammar_accepts(argv, command, check):
    call = parse("bd", argv)
    assert call.ok and call.command == command
    assert {k: call.args[k] for k in check} == check


@pytest.mark.parametrize(
    "argv",
    [["create"], ["create", "x", "-p", "5"], ["create", "x", "-t", "story"], ["update"],
     ["update", "gt-a", "--status", "done"], ["dep", "add", "gt-a"], ["frobnicate"],
     ["create", "a", "--title", "b"], ["dep", "add", "a", "b", "--type", "kinda"]],
)  # fmt: skip
def test_bd_grammar_refuses(argv):
    assert parse("bd", argv).error


def test_gt_grammar():
    assert parse("gt", ["mail", "send", "gastown/witness", "-s", "s", "-m", "m"]).command == (
        "mail send"
    )
    assert parse("gt", ["nudge", "nux", "wake", "up"]).args["message"] == ["wake", "up"]
    assert parse("gt", ["mail", "send", "x"]).error  # -s and -m are required
    assert parse("gt", ["sling"]).error


def test_effects_in_bd_format(tmp_path: Path):
    rig = tmp_path / "rig"
    (rig / ".beads").mkdir(parents=True)
    out = apply(rig, parse("bd", ["create", "Epic", "-t", "epic"]))
    epic = out.split("Created issue: ")[1].split()[0]
    child = apply(rig, parse("bd", ["create", "Child", "--parent", epic, "-p", "1"]))
    child = child.split("Created issue: ")[1].split()[0]
    other = apply(rig, parse("bd", ["create", "Other"])).split("Created issue: ")[1].split()[0]
    apply(rig, parse("bd", ["dep", "add", other, child]))
    with pytest.raises(BeadsCommandError, match="cycle"):
        apply(rig, parse("bd", ["dep", "add", child, other]))
    with pytest.raises(BeadsCommandError, match="no issue"):
        apply(rig, parse("bd", ["close", "gt-zzzz"]))
    ready = apply(rig, parse("bd", ["ready"]))
    assert child in ready and other not in ready  # blocked by the open child
    apply(rig, parse("bd", ["close", child, "--reason", "done"]))
    assert other in apply(rig, parse("bd", ["ready"]))
    read = read_beads(rig, rig="rig")
    assert not read.problems and len(read.beads) == 5  # every line is a valid bd bead version
    beads = current(rig)
    assert beads[child]["status"] == "closed" and beads[child]["close_reason"] == "done"
    assert beads[child]["dependencies"][0]["type"] == "parent-child"
