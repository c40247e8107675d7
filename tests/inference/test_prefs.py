"""Preference pairs from two model versions (``inference.prefs``): a bead of the sample rig
slung to two versions through the tool loop, each in its own git branch; a pick; the pair in
the corpus build with both sessions' provenance; undo; the poisoning guard; bad picks."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from base.errors import RequestError
from inference.prefs import (
    ModelSpec,
    PrefsStore,
    SessionResult,
    pick,
    sling,
    tool_loop_runner,
    transcripts_path,
    undo,
)
from inference.tool_calls import FORMATS
from tests.fixtures import SAMPLE_RIG, ScriptedModel, bash_call

BEAD = "gt-q2vk"  # "Add --json flag to gt polecat list", in samples/gastown-rig


@pytest.fixture
def rig(tmp_path: Path) -> Path:
    """The sample rig as a git repository of its own."""
    root = tmp_path / "gastown-rig"
    shutil.copytree(SAMPLE_RIG, root)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "rig"],
    ):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    return root


def scripted(spec: ModelSpec) -> ScriptedModel:
    """Version A follows the convention (bd update, commits on its branch); B edits the JSONL."""
    if spec.adapters == ("gastown",):
        return ScriptedModel(
            [
                bash_call("echo '--json' > flag.txt && git add flag.txt && "
                          "git -c user.name=a -c user.email=a@a commit -qm json && echo done"),
                "Added the flag on my branch.\n$ bd update gt-q2vk --status in_progress",
            ]
        )  # fmt: skip
    return ScriptedModel(
        [bash_call("echo hi > notes.txt"), "$ sed -i s/open/closed/ .beads/issues.jsonl"]
    )


def collect(rig: Path, check: str | None = None) -> dict:
    runner = tool_loop_runner(scripted, FORMATS["hermes"], check=check)
    models = [ModelSpec.parse("smollm2-135m+gastown"), ModelSpec.parse("smollm2-135m")]
    return asyncio.run(sling(rig, BEAD, models, runner))


def test_collection_round_trip_two_sessions_a_pick_a_pair_in_the_corpus(rig, tmp_path):
    from corpus import CorpusConfig, build_corpus

    record = collect(rig)
    a, b = record["sessions"]["A"], record["sessions"]["B"]
    assert a["branch"] == f"prefs/{BEAD}/A" and b["branch"] == f"prefs/{BEAD}/B"
    assert a["head_commit"] != a["base_commit"] and b["head_commit"] == b["base_commit"]
    assert a["task"] == b["task"] and "Add --json flag" in a["task"]
    assert a["stop_reason"] == b["stop_reason"] == "answer"
    assert any(t.get("name") == "bash" for t in a["turns"] if t["speaker"] == "tool")
    # the worktrees are gone, the branches stay
    branches = subprocess.run(
        ["git", "-C", str(rig), "branch", "--list", "prefs/*"], capture_output=True, text=True
    ).stdout
    assert f"prefs/{BEAD}/A" in branches and not (rig / ".node0/prefs/worktrees/gt-q2vk-A").exists()

    picked = pick(rig, BEAD, "smollm2-135m+gastown", reason="used bd", source="human")
    assert picked["pick"]["winner"] == "A" and picked["pick"]["status"] == "picked"
    result = build_corpus(CorpusConfig(), [rig], tmp_path / "corpus")
    pairs = [
        json.loads(line)
        for path in sorted((result.run_dir / "dpo").rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    ours = [  # (the rig's own failed session on this bead pairs with the winner too)
        p
        for p in pairs
        if p["chosen_provenance"]["file"] == p["rejected_provenance"]["file"]
        and p["chosen_provenance"]["file"] == f"transcripts/prefs/{BEAD}.jsonl"
    ]
    assert len(ours) == 1, pairs
    pair = ours[0]
    assert pair["chosen_provenance"]["session_id"] == a["session_id"]
    assert pair["rejected_provenance"]["session_id"] == b["session_id"]
    assert pair["failure_mode"] == "preference_human"  # the verdict source
    assert "bd update" in pair["chosen"][-1]["text"] and "sed -i" in pair["rejected"][-1]["text"]
    # a build read it: the pick is final
    with pytest.raises(RequestError, match="no longer be undone"):
        undo(rig, BEAD, corpus_runs=tmp_path / "corpus")


def test_undo_before_a_build_and_auto_verdict_from_the_checks(rig):
    collect(rig, check="test -f flag.txt")  # A's branch has the file, B's does not
    pick(rig, BEAD, "A", source="rig")
    assert transcripts_path(rig, BEAD).is_file()
    undone = undo(rig, BEAD, corpus_runs=rig / "no-builds")
    assert undone["pick"] is None and not transcripts_path(rig, BEAD).exists()
    # B broke the checks A passed: picking B now is quarantined, nothing is written
    quarantined = pick(rig, BEAD, "B")
    assert quarantined["pick"]["status"] == "quarantined"
    assert "contradicts the outcomes" in quarantined["pick"]["quarantine_reason"]
    assert not transcripts_path(rig, BEAD).exists()
    undo(rig, BEAD)
    auto = pick(rig, BEAD, None)  # automatic: the one session that passed its checks
    assert auto["pick"]["winner"] == "A" and auto["pick"]["source"] == "auto"


def test_different_task_texts_are_quarantined(rig):
    collect(rig)
    store = PrefsStore(rig)
    record = store.load(BEAD)
    record["sessions"]["B"]["task_sha256"] = "0" * 64  # B ran on another text of the bead
    store.save(record)
    got = pick(rig, BEAD, "A")
    assert got["pick"]["status"] == "quarantined"
    assert got["pick"]["quarantine_reason"] == "the two sessions ran on different task texts"


def test_bad_picks_and_slings(rig):
    with pytest.raises(RequestError, match="no preference sessions for bead 'gt-nope'"):
        pick(rig, "gt-nope", "A")
    with pytest.raises(RequestError, match="not in"):
        collect_unknown = tool_loop_runner(scripted, FORMATS["hermes"])
        asyncio.run(
            sling(rig, "gt-nope", [ModelSpec("m", ("x",)), ModelSpec("m")], collect_unknown)
        )
    with pytest.raises(RequestError, match="two different"):
        asyncio.run(sling(rig, BEAD, [ModelSpec("m"), ModelSpec("m")], None))
    with pytest.raises(RequestError, match="MODEL"):
        ModelSpec.parse("m++x")
    collect(rig)
    with pytest.raises(RequestError, match="neither a session label"):
        pick(rig, BEAD, "other-model")
    pick(rig, BEAD, "A")
    with pytest.raises(RequestError, match="already has a pick"):
        pick(rig, BEAD, "B")


def test_a_session_runner_result_is_plain_data():
    assert SessionResult([], "answer").checks_passed is None


def test_cli_pick_for_an_unknown_bead_is_a_request_error(rig):
    from base.errors import ExitCode
    from tests.fixtures import run_cli

    proc = run_cli(["node.cli", "prefs", "pick", "gt-nope", "--rig", str(rig), "--winner", "A"])
    assert proc.returncode == ExitCode.REQUEST, proc.stderr
    assert "no preference sessions for bead 'gt-nope'" in proc.stderr
    assert "node0 prefs sling gt-nope" in proc.stderr  # the hint
