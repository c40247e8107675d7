"""Hugging Face export: reloads with transformers and gives the source's logits exactly."""

from __future__ import annotations

import json

import pytest
import torch

from base.errors import CheckpointError
from checkpoint_gather.coverage import check_coverage
from checkpoint_gather.export import assemble_state, export_checkpoint
from checkpoint_gather.hf_export import export_hf
from models import LM_HEAD
from provenance import create_run_dir, sha256_file
from tests.fixtures import load_causal_lm, load_config, logits, stage_sources


def _state(model_dir):
    sources = stage_sources(model_dir)
    plan = check_coverage(load_config(model_dir), [m for m, _ in sources])
    return assemble_state(plan, sources)


@pytest.mark.parametrize("tied", [False, True])
def test_export_reloads_with_identical_logits(tiny_models, tmp_path, tied):
    src = tiny_models[tied]
    out = export_hf(
        tmp_path / "hf", load_config(src), _state(src), tokenizer_dir=src, provenance={"test": tied}
    )
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "node0_export.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is tied
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        assert (LM_HEAD in handle.keys()) is not tied
    record = json.loads((out / "node0_export.json").read_text())
    assert record["provenance"] == {"test": tied}
    assert record["files"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    assert torch.equal(logits(load_causal_lm(src)), logits(load_causal_lm(out)))
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sharded_export_reloads(tiny_models, tmp_path):
    src = tiny_models[False]
    out = export_hf(
        tmp_path / "hf", load_config(src), _state(src), tokenizer_dir=src, max_shard_bytes=150_000
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert all((out / s).is_file() for s in shards)
    assert torch.equal(logits(load_causal_lm(src)), logits(load_causal_lm(out)))


def test_refuses_incomplete_state_and_existing_output(tiny_models, tmp_path):
    src = tiny_models[False]
    config = load_config(src)
    state = _state(src)
    broken = {k: v for k, v in state.items() if not k.startswith("model.layers.4.")}
    with pytest.raises(CheckpointError, match="layers 4 are incomplete"):
        export_hf(tmp_path / "hf", config, broken, tokenizer_dir=src)
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp dir left
    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        export_hf(tmp_path / "taken", config, state, tokenizer_dir=src)


@pytest.mark.parametrize("durable, gguf", [(False, ("f32",)), (True, ("f32", "f16"))])
def test_export_job_manifest_and_run_record(tiny_models, tmp_path, durable, gguf):
    src = tiny_models[True]
    run = create_run_dir(tmp_path / "runs", "gather-test", config={"model": "tiny"})
    result = export_checkpoint(
        tmp_path / "out",
        load_config(src),
        stage_sources(src),
        tokenizer_dir=src,
        gguf_types=gguf,
        run=run,
        durable=durable,
    )
    assert set(result.gguf_files) == set(gguf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "runs"]  # no temporaries
    manifest = json.loads(result.manifest.read_text())
    assert [s["layers"] for s in manifest["sources"]] == [[0, 2], [2, 5], [5, 6]]
    assert manifest["coverage"]["layers"]["3"] == "peer-1/stage-2-5"
    files = {
        rel: entry for out in manifest["outputs"].values() for rel, entry in out["files"].items()
    }
    assert "hf/model.safetensors" in files and "model-f32.gguf" in files
    for rel, entry in files.items():
        assert sha256_file(result.out_dir / rel) == entry["sha256"], rel
    record = json.loads((run.path / "run_record.json").read_text())
    assert record["status"] == "done"
    digests = {a["sha256"] for a in record["artifacts"]}
    assert {e["sha256"] for e in files.values()} <= digests
    assert sha256_file(result.manifest) in digests


def test_export_job_fails_closed(tiny_models, tmp_path):
    src = tiny_models[False]
    sources = stage_sources(src)
    manifest, state = sources[1]
    corrupt = dict(state)
    name = "model.layers.3.mlp.down_proj.weight"
    corrupt[name] = state[name] * 1.0001
    run = create_run_dir(tmp_path / "runs", "gather-test")
    with pytest.raises(CheckpointError, match="corrupt"):
        export_checkpoint(
            tmp_path / "out",
            load_config(src),
            [sources[0], (manifest, corrupt), sources[2]],
            tokenizer_dir=src,
            run=run,
        )
    assert not (tmp_path / "out").exists()
    assert json.loads((run.path / "run_record.json").read_text())["status"] == "failed"
    result = export_checkpoint(
        tmp_path / "out", load_config(src), sources, tokenizer_dir=src, gguf_types=()
    )  # rerun once the fault is gone
    assert result.hf_dir.is_dir() and result.gguf_files == {}


def test_a_checked_tokenizer_is_not_loaded_again_unless_its_copy_differs(
    tiny_models, tmp_path, monkeypatch
):
    from checkpoint_gather import hf_export

    src = tiny_models[False]
    checked = hf_export.check_tokenizer(src)
    assert checked is not None and checked.size > 0 and "tokenizer.json" in checked.files
    loads = []
    real = hf_export._load_tokenizer
    monkeypatch.setattr(hf_export, "_load_tokenizer", lambda *a: loads.append(a) or real(*a))
    (tmp_path / "a").mkdir()
    hf_export.copy_tokenizer(src, tmp_path / "a", vocab_size=10**6, checked=checked)
    assert loads == []  # the copies are the checked bytes
    stale = hf_export.TokenizerCheck(
        checked.source, {**checked.files, "tokenizer.json": "0"}, checked.size
    )
    (tmp_path / "b").mkdir()
    hf_export.copy_tokenizer(src, tmp_path / "b", vocab_size=10**6, checked=stale)
    assert len(loads) == 1  # not what was checked: the copy is loaded


def test_a_failing_writer_leaves_nothing_while_the_others_run(tiny_models, tmp_path, monkeypatch):
    from checkpoint_gather import export

    def broken(*args, **kwargs):
        raise CheckpointError("the GGUF writer failed")

    monkeypatch.setattr(export, "export_gguf", broken)
    src = tiny_models[False]
    run = create_run_dir(tmp_path / "runs", "gather-test")
    with pytest.raises(CheckpointError, match="GGUF writer failed"):
        export_checkpoint(
            tmp_path / "out",
            load_config(src),
            stage_sources(src),
            tokenizer_dir=src,
            gguf_types=("f32", "f16"),
            run=run,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert json.loads((run.path / "run_record.json").read_text())["status"] == "failed"
