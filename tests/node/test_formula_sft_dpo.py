"""``node0 formula run sft-then-dpo``: its phases and generated configs (no swarm); and over
3 real daemons (tiny model, slow tier): step 1 SFT, the SFT adapter gathered, step 2 DPO
initialised from it and referenced against it (starting at reward margin 0), the DPO adapter
gathered; every phase with evidence, the job bead done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gastown.beads import newest_beads, read_beads
from node.cli import main
from tests.fixtures import SPLIT, dpo_train_config, local_swarm, train_config

FORMULA = Path("configs/formulas/sft-then-dpo.formula.toml").resolve()


def test_the_formula_declares_two_training_steps_and_its_configs_validate(tmp_path):
    """Without a swarm: every declared check has an implementation, and the configs the two
    training phases generate are valid TrainConfigs (DPO: init_from + the SFT reference)."""
    from node import formula_run, formula_sft_dpo
    from node.formula_run import Context, register_phases
    from node.formula_spec import load_formula
    from training.config import TrainConfig

    register_phases(formula_sft_dpo)
    register_phases(formula_sft_dpo)  # idempotent: the CLI registers on every run
    spec = load_formula(str(FORMULA))
    assert [p.id for p in spec.phases] == ["sft", "sft_export", "dpo", "dpo_export"]
    for phase in spec.phases:
        for check in (*phase.preconditions, *phase.postconditions):
            assert check in formula_run.CHECKS, check
    values = spec.resolve({"lora_rank": "4", "sft_steps": "3", "dpo_steps": "2"})
    ctx = Context(tmp_path, values, {}, bead=None)
    ctx.phase_dir = tmp_path / "sft.1"
    ctx.phase_dir.mkdir()
    formula_sft_dpo.BEFORE["sft"](ctx)
    sft = TrainConfig.model_validate(yaml.safe_load(Path(ctx.current["config_file"]).read_text()))
    assert (sft.adapter, sft.steps, sft.data.kind, sft.lora.rank) == ("gastown-sft", 3, "sft", 4)
    outputs = {"sft": {"adapter": "gastown-sft"}, "sft_export": {"adapter_dir": "/x/adapter"}}
    ctx = Context(tmp_path, values, outputs, bead=None)
    ctx.phase_dir = tmp_path / "dpo.1"
    ctx.phase_dir.mkdir()
    formula_sft_dpo.BEFORE["dpo"](ctx)
    dpo = TrainConfig.model_validate(yaml.safe_load(Path(ctx.current["config_file"]).read_text()))
    assert (dpo.adapter, dpo.steps, dpo.data.kind) == ("gastown-dpo", 2, "dpo")
    assert dpo.init_from == "/x/adapter" and dpo.dpo.reference_adapter == "gastown-sft"
    assert dpo.dpo.beta == 0.1  # the rest of dpo_config's dpo: kept


@pytest.mark.integration
@pytest.mark.slow  # 261 s on 2 busy cores: two trainings and two gathers over 3 daemons
def test_sft_then_dpo_runs_both_steps_end_to_end(tiny_model_dir, small_rig, tmp_path, capsys,
                                                 monkeypatch):  # fmt: skip
    monkeypatch.setenv("NODE0_HOME", str(tmp_path / "home"))
    sft, dpo = tmp_path / "sft.yaml", tmp_path / "dpo.yaml"
    sft.write_text(yaml.safe_dump(train_config(tiny_model_dir, checkpoint_every=0)))
    dpo_raw = dpo_train_config(tiny_model_dir, checkpoint_every=0)
    dpo_raw["lora"] = {"rank": 4, "alpha": 8}
    dpo.write_text(yaml.safe_dump(dpo_raw))
    runs = tmp_path / "runs"
    with local_swarm(tmp_path / "swarm", str(tiny_model_dir), SPLIT) as state:
        argv = ["formula", "run", str(FORMULA), "--runs-dir", str(runs)]
        for var in (
            f"model={tiny_model_dir}",
            f"rig={small_rig}",
            f"sft_config={sft}",
            f"dpo_config={dpo}",
            "lora_rank=4",
            "sft_steps=3",
            "dpo_steps=2",
            f"initial_peers={' '.join(state.initial_peers)}",
        ):
            argv += ["--var", var]
        code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    for phase in ("sft", "sft_export", "dpo", "dpo_export"):
        assert f"PHASE={phase} STATUS=ok" in out
    (run,) = runs.glob("formula-*")
    sft_phase = json.loads((run / "phase.sft.json").read_text())
    export = json.loads((run / "phase.sft_export.json").read_text())
    dpo_phase = json.loads((run / "phase.dpo.json").read_text())
    assert sft_phase["outputs"]["data_kind"] == "sft" and dpo_phase["outputs"]["data_kind"] == "dpo"
    config = yaml.safe_load(Path(dpo_phase["outputs"]["config_file"]).read_text())
    assert config["init_from"] == export["outputs"]["adapter_dir"]
    assert config["dpo"]["reference_adapter"] == sft_phase["outputs"]["adapter"] == "gastown-sft"
    record = json.loads(Path(dpo_phase["outputs"]["run_record_file"]).read_text())
    assert record["init_adapter"]["sha256"] == export["artifacts"][0]["sha256"]
    assert [c["ok"] for c in dpo_phase["postconditions"]] == [True, True]
    assert abs(record["before"]["heldout_dpo"]["rewards/margins"]) <= 1e-5
    assert len(record["losses"]) == 2
    assert (run / "dpo_export.1" / "gathered").is_dir()
    beads = newest_beads(read_beads(small_rig, rig=small_rig.name).beads).winners
    (job,) = [b for b in beads.values() if "training-job" in (b.fields.get("labels") or [])]
    assert job.status == "done"
