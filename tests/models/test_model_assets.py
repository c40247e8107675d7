"""Preparing a model's HF directory is atomic: complete with its record, or the old one kept."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from base.errors import CheckpointError
from base.hashing import sha256_file
from models import assets


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A catalog entry whose "conversion" writes one weights file with the given bytes."""
    gguf = tmp_path / "pkg" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf")
    target = tmp_path / "cache" / "m"
    spec = SimpleNamespace(pip_name="m-pkg", gguf_filename=gguf.name)
    monkeypatch.setattr(assets, "get_spec", lambda name: spec)
    monkeypatch.setattr(assets, "prepared_dir", lambda name: target)
    monkeypatch.setattr(assets, "source_gguf_path", lambda spec: gguf)
    weights = {"bytes": b"v1"}

    def convert(spec, gguf_path, out):
        if weights["bytes"] is None:
            (out / "model.safetensors").write_bytes(b"torn")
            raise RuntimeError("out of memory")
        (out / "model.safetensors").write_bytes(weights["bytes"])

    monkeypatch.setattr(assets, "_convert", convert)
    return target, weights


def test_prepare_writes_the_record_and_is_done_once(fake_model):
    target, weights = fake_model
    assert assets.prepare_model("m") == target
    record = assets.asset_record(target)
    assert record["files"] == {"model.safetensors": sha256_file(target / "model.safetensors")}
    assert record["source"]["file"] == "m.gguf"
    weights["bytes"] = b"v2"
    assets.prepare_model("m")  # already prepared: not converted again
    assert (target / "model.safetensors").read_bytes() == b"v1"


def test_force_replaces_only_once_the_new_directory_is_complete(fake_model):
    target, weights = fake_model
    assets.prepare_model("m")
    weights["bytes"] = None  # the conversion dies half-way
    with pytest.raises(CheckpointError, match="converting .* failed: out of memory"):
        assets.prepare_model("m", force=True)
    assert (target / "model.safetensors").read_bytes() == b"v1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no temp left
    weights["bytes"] = b"v2"
    assets.prepare_model("m", force=True)
    assert (target / "model.safetensors").read_bytes() == b"v2"
    assert json.loads((target / assets.ASSET_RECORD).read_text())["files"] == {
        "model.safetensors": sha256_file(target / "model.safetensors")
    }
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]
