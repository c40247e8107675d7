"""``init_from`` refuses an adapter that does not fit the run before anything reaches the
swarm: other LoRA settings, another model's shapes or layers, an unknown registry version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from base.errors import CheckpointError, ConfigError, ExitCode
from lora.config import LoraSettings
from registry import Registry
from tests.fixtures import make_adapter
from training.config import TrainConfig
from training.init_adapter import resolve_init_adapter

SETTINGS = LoraSettings(rank=4, alpha=8.0, init_seed=7)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "sft"
    make_adapter(tiny_model_dir, "sft", 1, out)
    return out


def resolve(source, model_dir, lora=SETTINGS, **kw):
    return resolve_init_adapter(
        str(source), model=str(model_dir), model_dir=model_dir, lora=lora, **kw
    )


def test_a_fitting_adapter_resolves_with_its_digest(sft_adapter, tiny_model_dir):
    init = resolve(sft_adapter, tiny_model_dir)
    assert len(init.sha256) == 64 and init.version is None
    # the settings the daemons attach it with differ from the config's in init_seed only
    assert init.settings.model_dump(exclude={"init_seed"}) == SETTINGS.model_dump(
        exclude={"init_seed"}
    )
    assert init.record()["sha256"] == init.sha256


def test_other_lora_settings_are_refused(sft_adapter, tiny_model_dir):
    with pytest.raises(ConfigError, match="rank 4 .*the config's 8") as err:
        resolve(sft_adapter, tiny_model_dir, LoraSettings(rank=8, alpha=8.0))
    assert err.value.exit_code == ExitCode.CONFIG
    with pytest.raises(ConfigError, match="target_modules"):
        resolve(
            sft_adapter, tiny_model_dir, LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj",))
        )


def test_missing_layers_and_other_shapes_are_refused(sft_adapter, tiny_model_dir, tmp_path):
    short = tmp_path / "short"
    shutil.copytree(sft_adapter, short)
    tensors = load_file(short / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if ".layers.5." not in k},
              short / "adapter_model.safetensors")  # fmt: skip
    with pytest.raises(ConfigError, match="layers 0..4, the model has layers 0..5"):
        resolve(short, tiny_model_dir)
    wide = tmp_path / "wide"
    shutil.copytree(sft_adapter, wide)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    other_model = tmp_path / "other-model"
    other_model.mkdir()
    (other_model / "config.json").write_text(
        json.dumps({**config, "hidden_size": config["hidden_size"] * 2})
    )
    with pytest.raises(ConfigError, match="another architecture"):
        resolve(wide, other_model)


def test_unknown_sources_are_refused(tiny_model_dir, sft_adapter, tmp_path):
    with pytest.raises(ConfigError, match="not a registry version name"):
        resolve(tmp_path / "nowhere", tiny_model_dir)
    registry = Registry(tmp_path / "registry.db", tmp_path / "store")
    scores = {"categories": {"x": {"score": 90}}, "composite": 90, "gate": {"passed": True}}
    registry.register(
        role="deacon", base_model=str(tiny_model_dir), adapter_dir=sft_adapter, eval_scores=scores
    )
    registry.close()
    db = tmp_path / "registry.db"
    init = resolve("deacon-v1", tiny_model_dir, registry_db=db)
    assert (
        init.version == "deacon-v1" and init.sha256 == resolve(sft_adapter, tiny_model_dir).sha256
    )
    with pytest.raises(ConfigError, match="no such version .*deacon-v1"):
        resolve("deacon-v7", tiny_model_dir, registry_db=db)
    with pytest.raises(ConfigError, match="trained on"):
        resolve_init_adapter(
            "deacon-v1", model="smollm2-135m", model_dir=tiny_model_dir, lora=SETTINGS,
            registry_db=db,
        )  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError):
        resolve(empty, tiny_model_dir)


def test_init_from_is_a_config_field(tiny_model_dir):
    from tests.fixtures import dpo_train_config

    cfg = TrainConfig.model_validate(dpo_train_config(tiny_model_dir, init_from="deacon-v1"))
    assert cfg.init_from == "deacon-v1"
    with pytest.raises(ValueError):
        TrainConfig.model_validate(dpo_train_config(tiny_model_dir, init_from=""))


def test_node0_train_refuses_a_misfit_init_adapter_before_the_swarm(
    sft_adapter, tiny_model_dir, tmp_path
):
    """Exit 3 with the reason, before any peer is contacted or run directory written."""
    import yaml

    from tests.fixtures import dpo_train_config, run_cli

    raw = dpo_train_config(tiny_model_dir, init_from=str(sft_adapter))
    raw["lora"] = {"rank": 8, "alpha": 8}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = run_cli(
        ["node.cli", "train", "--config", str(config), "--runs-dir", str(tmp_path / "runs"),
         "--initial-peers", "/ip4/127.0.0.1/tcp/9/p2p/QmNotAPeer"],
    )  # fmt: skip
    assert proc.returncode == ExitCode.CONFIG, proc.stderr[-2000:]
    assert "LoRA settings differ from the run's: rank 4" in proc.stderr
    assert not (tmp_path / "runs").exists()
