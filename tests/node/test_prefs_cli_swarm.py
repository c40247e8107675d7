"""``node0 prefs`` through the CLI on a real swarm (3 SmolLM2 daemons; the tiny model's 256
positions cannot hold the tool loop's prompt): a bead slung to two
registry versions (``deacon-v1,deacon@v2``, each adapter attached on the daemons at run time),
a pick, and ``node0 corpus build`` writing the DPO pair with both sessions' provenance; an
unknown version is refused before any session runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from base.errors import ExitCode
from registry import Registry
from tests.fixtures import SAMPLE_RIG, SMOLLM2_3STAGE, local_swarm, make_adapter, run_cli

pytestmark = pytest.mark.integration

BEAD = "gt-q2vk"  # "Add --json flag to gt polecat list", in samples/gastown-rig
MODEL = "smollm2-135m"


def git_rig(root: Path) -> Path:
    shutil.copytree(SAMPLE_RIG, root)
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "rig"],
    ):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    return root


@pytest.mark.timeout(420)  # measured 177 s on 2 busy cores: swarm start, two sessions, a build
def test_prefs_sling_pick_build_through_the_cli_on_a_swarm(smollm2_dir, tmp_path):
    rig = git_rig(tmp_path / "gastown-rig")
    registry = Registry(tmp_path / "registry.db", tmp_path / "store")
    scores = {"categories": {"x": {"score": 90}}, "composite": 90, "gate": {"passed": True}}
    for seed in (1, 2):
        make_adapter(smollm2_dir, "deacon", seed, tmp_path / f"adapter-{seed}", scale=0.02)
        registry.register(
            role="deacon",
            base_model=MODEL,
            adapter_dir=tmp_path / f"adapter-{seed}",
            eval_scores=scores,
        )
    registry.close()
    env = {"NODE0_REGISTRY": str(tmp_path / "registry.db")}

    def prefs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return run_cli(["node.cli", "prefs", *args, "--rig", str(rig)], env=env, timeout=timeout)

    # an unknown version: refused before any session or worktree
    with local_swarm(tmp_path / "swarm", MODEL, SMOLLM2_3STAGE) as state:
        peers = ["--initial-peers", *state.initial_peers]
        unknown = prefs("sling", BEAD, "--models", "deacon-v1,deacon-v9", *peers)
        assert unknown.returncode == ExitCode.REQUEST, unknown.stderr
        assert "no version deacon-v9 (it has deacon-v1, deacon-v2)" in unknown.stderr
        assert not (rig / ".node0/prefs").exists()
        slung = prefs(
            "sling", BEAD, "--models", "deacon-v1,deacon@v2", "--max-steps", "2",
            "--max-new-tokens", "6", "--check", "true", *peers, timeout=300,
        )  # fmt: skip
    assert slung.returncode == 0, slung.stderr[-3000:]
    record = json.loads(slung.stdout.strip().splitlines()[-1])
    a, b = record["sessions"]["A"], record["sessions"]["B"]
    assert (a["model"], b["model"]) == ("deacon-v1", "deacon-v2")
    assert a["registry"]["adapter"] == "deacon-v1" and b["registry"]["base_model"] == MODEL
    assert "error" not in (a["stop_reason"], b["stop_reason"]), slung.stderr[-2000:]
    assert a["checks_passed"] is True and b["checks_passed"] is True
    # the winner: A unless only B answered (the guard would quarantine that verdict)
    winner = "deacon-v2" if a["stop_reason"] != "answer" == b["stop_reason"] else "deacon-v1"
    picked = prefs("pick", BEAD, "--winner", winner, "--reason", "followed bd")
    assert picked.returncode == 0, picked.stderr
    assert json.loads(picked.stdout)["pick"]["status"] == "picked"

    built = run_cli(
        ["node.cli", "corpus", "build", "--rig", str(rig), "--out", str(tmp_path / "corpus")],
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (run,) = (tmp_path / "corpus").glob("corpus-*")
    pairs = [
        json.loads(line)
        for path in sorted((run / "dpo").rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    ours = [
        p
        for p in pairs
        if p["chosen_provenance"]["file"] == p["rejected_provenance"]["file"]
        and p["chosen_provenance"]["file"] == f"transcripts/prefs/{BEAD}.jsonl"
    ]
    assert len(ours) == 1, pairs
    stored = json.loads((rig / f".node0/prefs/{BEAD}.json").read_text())["sessions"]
    win, lose = ("A", "B") if winner == "deacon-v1" else ("B", "A")
    assert ours[0]["chosen_provenance"]["session_id"] == stored[win]["session_id"]
    assert ours[0]["rejected_provenance"]["session_id"] == stored[lose]["session_id"]
    assert ours[0]["failure_mode"] == "preference_human"
