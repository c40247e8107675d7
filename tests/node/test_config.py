import pytest

from base.config_loader import load_yaml_config
from base.errors import ConfigError
from node.config import DaemonConfig, SwarmPreset, resolve_preset_path


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
