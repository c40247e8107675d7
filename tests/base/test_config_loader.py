"""The one YAML loader: overrides are validated like the file, the sha256 is the file's."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from base.config_loader import load_yaml_config
from base.errors import ConfigError
from base.hashing import sha256_bytes


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1)
    name: str = "default"


def test_overrides_win_over_the_file_and_keep_its_sha(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("k: 3\nname: file\n")
    settings, sha = load_yaml_config(path, _Settings, overrides={"name": "cli"})
    assert (settings.k, settings.name) == (3, "cli")
    assert sha == sha256_bytes(path.read_bytes())


@pytest.mark.parametrize(
    "text, overrides, match",
    [
        ("k: 3\n", {"k": 0}, r"k: Input should be greater than or equal to 1"),
        ("", {"bogus": 1}, r"bogus: Extra inputs"),
        ("k: [\n", {}, "not valid YAML"),
    ],
)
def test_a_bad_value_is_named_with_the_file(tmp_path, text, overrides, match):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_yaml_config(path, _Settings, overrides=overrides)
    assert str(path) in str(err.value)
