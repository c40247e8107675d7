import pytest
import torch

from base.config_loader import load_yaml_config
from base.errors import ConfigError, ExitCode
from node.config import DaemonConfig, SwarmPreset, resolve_preset_path
from tests.fixtures import run_cli


def test_shipped_presets_validate():
    for name in ("smollm2-3stage", "smollm2-failover"):
        preset, sha = load_yaml_config(resolve_preset_path(name), SwarmPreset)
        layers = sorted({(s.start, s.end) for p in preset.peers for s in p.stages})
        assert layers == [(0, 10), (10, 20), (20, 30)] and len(sha) == 64


@pytest.mark.parametrize(
    "text, match",
    [
        ("stages: [{start: 5, end: 2}]", "end .2. must be greater than start"),
        ("stages: []", "at least 1 item"),
        ("stages: [{start: 0, end: 2}]\nbogus: 1", "bogus: Extra inputs"),
        ("stages: [{start: 0, end: 2}]\nannounce_ttl: 1\nannounce_period: 5", "must exceed"),
        ("stages: [{start: 0, end: 2}\n", "not valid YAML"),
        ("- just a list", "expected a mapping"),
        ("stages: [{start: 0, end: 2}]\ndtype: float64", "dtype: Input should be"),
        ("stages: [{start: 0, end: 2}]\ndevice: gpu0", "device: String should match"),
        ("stages: [{start: 0, end: 2}]\naccept_input_dtypes: [int8]", "accept_input_dtypes"),
    ],
)
def test_bad_daemon_configs_name_the_problem(tmp_path, text, match):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_yaml_config(path, DaemonConfig)
    assert str(path) in str(err.value)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="smollm2-3stage"):
        resolve_preset_path("no-such-preset")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_serve_on_cuda_without_cuda_exits_11_before_loading_anything(tmp_path, tiny_model_dir):
    config = tmp_path / "d.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\nstages: [{{start: 0, end: 2}}]\ndevice: cuda\ndtype: bfloat16\n"
    )
    result = run_cli(["node.cli", "serve", "--config", str(config)], timeout=120)
    assert result.returncode == ExitCode.DEVICE == 11, result.stderr
    assert "device 'cuda' asked for, but this machine has no usable CUDA device" in result.stderr
    assert "never falls back to the CPU" in result.stderr
