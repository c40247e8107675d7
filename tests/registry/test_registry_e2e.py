"""The lifecycle end to end over real processes on the sample rig and a 3-stage SmolLM2 swarm:
formula → gated, registered deacon-v1 (bead done with the scores) → deploy (town settings) →
``node0-inference --model deacon-v1`` through the swarm with its adapter loaded at run time →
deacon-v2, deploy, rollback (settings and outputs back to v1) → a failing gate (bead failed,
deploy refused) → prune of an undeployed old version only → ``model stale`` after a CLAUDE.md
edit. Several minutes on 2 cores: ``slow`` (the cheaper run-time loading test is
tests/node/test_runtime_adapters.py, in the default suite)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from gastown.beads import newest_beads, read_beads
from registry import Registry
from tests.fixtures import REPO, SAMPLE_RIG, local_swarm, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

MODEL = "smollm2-135m"
SPLIT = [("stage0", [(0, 10)]), ("stage1", [(10, 20)]), ("stage2", [(20, 30)])]
TASK = "conv-find-ready-work"
PROMPT = "Which bead should the deacon look at first?\n"
FIGURES: dict[str, float] = {}


def suite(path: Path, composite: float) -> Path:
    """The shipped suite's tasks under a gate of our own (one short task is run)."""
    shipped = yaml.safe_load((REPO / "configs/eval/suite.yaml").read_text())
    shipped["tasks"] = [str(REPO / "configs/eval" / t) for t in shipped["tasks"]]
    shipped["gate"] = {"composite": composite, "categories": {}}
    shipped["limits"].update(max_steps=1, max_new_tokens=24, time_limit_s=120)
    path.write_text(yaml.safe_dump(shipped))
    if not (path.parent / "fixtures").exists():  # fixture folders are read beside the suite
        (path.parent / "fixtures").symlink_to(REPO / "configs/eval/fixtures")
    return path


def train_config(path: Path) -> Path:
    """The shipped trainer config, made short: small batches, short rows, a high rate (two
    steps must move the adapter enough to change a greedy answer)."""
    config = yaml.safe_load((REPO / "configs/train/smollm2-gastown.yaml").read_text())
    config.update(learning_rate=0.02, micro_batch_size=1, checkpoint_every=0)
    config["data"].update(batch_size=2, max_length=128)
    path.write_text(yaml.safe_dump(config))
    return path


def job_beads(rig: Path) -> dict:
    beads = newest_beads(read_beads(rig, rig="gastown").beads).winners
    return {k: b for k, b in beads.items() if "training-job" in (b.fields.get("labels") or [])}


def test_formula_to_deploy_serve_rollback_prune_stale(smollm2_dir, tmp_path, monkeypatch):
    # a NODE0_HOME of its own (the prepared model linked in): no credentials of other swarms
    # on this machine, so every command joins this open swarm as it is
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / MODEL).symlink_to(smollm2_dir.parent)
    monkeypatch.setenv("NODE0_HOME", str(home))
    rig = shutil.copytree(SAMPLE_RIG, tmp_path / "gastown-rig")
    settings = tmp_path / "town" / "settings.json"
    env = {"NODE0_REGISTRY": str(tmp_path / "registry.db"), "GT_TOWN_SETTINGS": str(settings)}
    runs = tmp_path / "runs"
    passing, failing = suite(tmp_path / "pass.yaml", 0), suite(tmp_path / "fail.yaml", 100)
    trainer = train_config(tmp_path / "train.yaml")

    def node0(*args, timeout=900):
        started = time.monotonic()
        proc = run_cli(["node.cli", *args], timeout=timeout, env=env)
        return proc, time.monotonic() - started

    # an open swarm: this test is about the registry's lifecycle (the private swarm's checks,
    # LoadAdapter host-only included, are tests/node/test_runtime_adapters.py and security's;
    # node0 gather does not join a private swarm's DHT yet)
    with local_swarm(tmp_path / "swarm", MODEL, SPLIT, insecure_open_swarm=True) as state:
        peers = " ".join(state.initial_peers)

        def formula(eval_suite: Path):
            return node0(
                "formula", "run", "train-role-model", "--runs-dir", str(runs),
                "--var", "role=deacon", "--var", f"rig={rig}", "--var", "steps=2",
                "--var", f"train_config={trainer}",
                "--var", f"eval_suite={eval_suite}", "--var", f"eval_tasks={TASK}",
                "--var", f"initial_peers={peers}",
            )  # fmt: skip

        def ask(model: str, *extra: str) -> str:
            proc = run_cli(
                ["inference.agent_client", "--model", model,
                 "--initial-peers", *state.initial_peers,
                 "--max-new-tokens", "24", "--transcript", "off", *extra],
                stdin=PROMPT, timeout=300, env=env,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-2000:]
            return proc.stdout

        # 1. a gated, registered deacon-v1; its bead done with the scores; deploy writes settings
        proc, FIGURES["formula_v1_s"] = formula(passing)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        registry = Registry.open(tmp_path / "registry.db")
        v1 = registry.get("deacon-v1")
        assert v1.gate == "passed" and v1.eval_scores["suite"]
        assert v1.train_run_dir and v1.config_sha256 and v1.corpus_manifest_sha256
        assert "CLAUDE.md" in v1.conventions["files"]
        (bead1,) = job_beads(rig).values()
        notes = json.loads(bead1.fields["notes"])
        assert bead1.status == "done" and notes["version"] == "deacon-v1"
        assert notes["composite"] == v1.eval_scores["composite"] and notes["categories"]
        proc, _ = node0("model", "deploy", "deacon-v1", "--rig", str(rig), "--json")
        assert proc.returncode == 0, proc.stderr
        agent = json.loads(settings.read_text())["agents"]["node0-deacon"]
        assert agent["args"][:2] == ["--model", "deacon-v1"]

        # 2. node0-inference --model deacon-v1: its adapter loaded at run time, answering as the
        # adapter the training left on the stages (the one gather exported)
        started = time.monotonic()
        v1_text = ask("deacon-v1")
        FIGURES["first_answer_with_load_s"] = time.monotonic() - started
        trained = ask(MODEL, "--adapters", f"job-{bead1.id}")
        assert v1_text == trained
        FIGURES["v1_answer_differs_from_base"] = float(v1_text != ask(MODEL))

        # 3. deacon-v2: deploy, then roll back; settings and outputs as before
        proc, FIGURES["formula_v2_s"] = formula(passing)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert registry.get("deacon-v2").parent == "deacon-v1"
        assert node0("model", "deploy", "deacon-v2", "--rig", str(rig))[0].returncode == 0
        assert json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1] == "deacon-v2"
        v2_text = ask("deacon-v2")
        proc, _ = node0("model", "rollback", "--rig", str(rig), "--role", "deacon", "--json")
        assert proc.returncode == 0 and json.loads(proc.stdout)["to"] == "deacon-v1"
        model = json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1]
        assert model == "deacon-v1" and ask(model) == v1_text
        FIGURES["v1_v2_answers_differ"] = float(v1_text != v2_text)

        # 5. a failing eval gate: the flow stops at eval (exit 9), the bead is failed with the
        # scores; registered anyway by hand, the version cannot be deployed
        proc, FIGURES["formula_failing_s"] = formula(failing)
        assert proc.returncode == 9, proc.stdout[-3000:] + proc.stderr[-3000:]
        (bead3,) = [b for b in job_beads(rig).values() if b.status == "failed"]
        notes3 = json.loads(bead3.fields["notes"])
        assert notes3["failed_phase"] == "eval" and notes3["exit_code"] == 9
        assert "composite" in notes3
        (flow3,) = [
            r
            for r in runs.glob("formula-*")
            if (r / "phase.eval.json").exists()
            and json.loads((r / "phase.eval.json").read_text())["outcome"] == "failed"
        ]
        assert not (flow3 / "phase.export.json").exists()
        eval_run = json.loads((flow3 / "phase.eval.json").read_text())["outputs"]["eval_run_dir"]
        gathered = tmp_path / "gathered-v3"
        proc, _ = node0("gather", "--model", MODEL, "--adapters-only", "--adapter",
                        f"job-{bead3.id}", "--gguf", "none", "--out", str(gathered),
                        "--runs-dir", str(tmp_path / "gather-runs"),
                        "--initial-peers", *state.initial_peers)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        (gather_run,) = (tmp_path / "gather-runs").glob("gather-*")
        proc, _ = node0("model", "register", "--role", "deacon", "--gather-run", str(gather_run),
                        "--eval-run", eval_run, "--rig", str(rig), "--json")  # fmt: skip
        assert proc.returncode == 0 and json.loads(proc.stdout)["gate"] == "failed", proc.stderr
        proc, _ = node0("model", "deploy", "deacon-v3", "--rig", str(rig), "--json")
        assert proc.returncode == 9 and json.loads(proc.stdout)["reason"] == "gate_not_passed"
        assert json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1] == "deacon-v1"

    # 4. prune: v1 deployed, v3 the newest; only v2 goes, and only its artifacts
    sha = {v.id: v.adapters[0].sha256 for v in registry.versions()}
    proc, _ = node0("model", "prune", "--keep", "1", "--json")
    assert [p["version"] for p in json.loads(proc.stdout)["plan"]] == ["deacon-v2"]
    proc, _ = node0("model", "prune", "--keep", "1", "--yes", "--json")
    assert json.loads(proc.stdout)["pruned"][0]["version"] == "deacon-v2"
    assert not registry.store.path_for(sha["deacon-v2"]).exists()
    registry.store.verify(sha["deacon-v1"])
    registry.store.verify(sha["deacon-v3"])

    # 6. staleness: a CLAUDE.md edit
    proc, _ = node0("model", "stale", "--rig", str(rig), "--json")
    assert proc.returncode == 0, proc.stdout
    (rig / "CLAUDE.md").write_text((rig / "CLAUDE.md").read_text() + "\nAlways run bd sync.\n")
    proc, _ = node0("model", "stale", "--rig", str(rig), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 9
    assert all(r["changed"] == ["CLAUDE.md"] and r["stale"] for r in report["versions"])
    registry.close()
    print("FIGURES", json.dumps(FIGURES))
