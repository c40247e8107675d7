"""``node0 inspect`` and ``node0 stamp``: reports, quality score, repair of a contradicting
declaration, and the input left untouched."""

from __future__ import annotations

import json
import shutil

import pytest

from base.errors import CheckpointError, ExitCode
from checkpoint_gather.export import export_checkpoint
from checkpoint_gather.inspect import inspect_checkpoint
from checkpoint_gather.stamp import STAMP_RECORD, stamp_checkpoint
from node.cli import main
from pipeline_stages.loader import load_stage
from provenance import sha256_file
from tests.fixtures import load_config, stage_sources


def _digests(directory):
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def export(tiny_models, tmp_path_factory):
    src = tiny_models[True]
    out = tmp_path_factory.mktemp("inspect") / "export"
    return export_checkpoint(
        out, load_config(src), stage_sources(src), tokenizer_dir=src, gguf_types=("f16",)
    )


def test_inspect_export(export, capsys):
    report = inspect_checkpoint(export.hf_dir)
    assert report.architecture == "LlamaForCausalLM" and report.model_type == "llama"
    assert report.shapes["layers"] == 6 and report.shapes["kv_heads"] == 2
    assert report.tied_embeddings is True and report.shapes["lm_head_tensor"] is False
    assert report.tokenizer["present"] and report.generation_config
    assert report.architecture_check == {"ok": True}
    assert "node0_export.json" in report.provenance
    assert report.score == 95 and [f["kind"] for f in report.findings] == ["chat_template"]
    gguf = inspect_checkpoint(export.gguf_files["f16"])
    assert gguf.format == "gguf" and gguf.architecture_check == {"ok": True}
    assert gguf.tokenizer["model"] == "gpt2" and gguf.tied_embeddings is True
    assert gguf.shapes["tensor_types"] == ["F16", "F32"]
    assert gguf.provenance["node0.provenance"]["sources"][0]["layers"] == [0, 2]
    assert main(["inspect", str(export.hf_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 95
    assert main(["inspect", str(export.hf_dir), "--min-score", "99"]) == ExitCode.QUALITY_GATE
    assert main(["inspect", str(export.out_dir)]) == ExitCode.CHECKPOINT


def test_inspect_lists_what_is_missing(tiny_models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models[False] / name, bare / name)
    (bare / "generation_config.json").unlink(missing_ok=True)
    report = inspect_checkpoint(bare)
    kinds = {f["kind"] for f in report.findings}
    assert {"tokenizer", "generation_config", "provenance", "chat_template"} <= kinds
    assert report.score == 100 - 20 - 10 - 10 - 5
    assert main(["inspect", str(tmp_path / "nothing")]) == ExitCode.CHECKPOINT


def test_inspect_original_smollm2_gguf():
    from models.catalog import get_spec, source_gguf_path

    report = inspect_checkpoint(source_gguf_path(get_spec("smollm2-135m")))
    assert report.architecture == "LlamaForCausalLM" and report.model_type == "llama"
    assert report.shapes | {"tensor_types": None} == {
        "layers": 30,
        "hidden": 576,
        "intermediate": 1536,
        "heads": 9,
        "kv_heads": 3,
        "head_dim": 64,
        "vocab": 49152,
        "context": 8192,
        "tensors": 272,
        "tensor_types": None,
    }
    assert "Q4_1" in report.shapes["tensor_types"]
    assert report.tied_embeddings is True
    assert report.tokenizer == {"present": True, "model": "gpt2", "pre": "smollm", "vocab": 49152}
    assert report.chat_template and report.architecture_check == {"ok": True}
    assert report.provenance["general"]["general.organization"] == "HuggingFaceTB"
    assert report.score == 100


def test_stamp_repairs_a_wrong_architecture(export, tmp_path, capsys):
    good = export.hf_dir
    before = _digests(good)
    # refused: would contradict the tensors
    assert (
        main(
            [
                "stamp",
                str(good),
                "--architecture",
                "Qwen2ForCausalLM",
                "--model-type",
                "qwen2",
                "-o",
                str(tmp_path / "refused"),
            ]
        )
        == ExitCode.CHECKPOINT
    )
    assert not (tmp_path / "refused").exists()
    # deliberately broken copy (what an upstream with a bad declaration looks like)
    bad = stamp_checkpoint(
        good,
        tmp_path / "bad",
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        allow_mismatch=True,
    ).out
    assert _digests(good) == before
    with pytest.raises(CheckpointError) as refused:
        load_stage(bad, 0, 3)
    message = str(refused.value)
    assert "node0 stamp" in message and "--architecture LlamaForCausalLM" in message
    assert not inspect_checkpoint(bad).architecture_check["ok"]
    # repair through the CLI with the command line the error suggested
    bad_before = _digests(bad)
    capsys.readouterr()
    assert (
        main(
            [
                "stamp",
                str(bad),
                "--architecture",
                "LlamaForCausalLM",
                "--model-type",
                "llama",
                "-o",
                str(tmp_path / "fixed"),
            ]
        )
        == 0
    )
    assert "architecture check: ok" in capsys.readouterr().out
    assert _digests(bad) == bad_before
    stage = load_stage(tmp_path / "fixed", 0, 3)
    assert stage.is_first and not stage.is_last
    history = json.loads((tmp_path / "fixed" / STAMP_RECORD).read_text())["history"]
    assert [h["changes"][0]["after"] for h in history] == [
        ["Qwen2ForCausalLM"],
        ["LlamaForCausalLM"],
    ]
    assert history[1]["input"]["files"]["config.json"] == bad_before["config.json"]
    assert inspect_checkpoint(tmp_path / "fixed").architecture_check == {"ok": True}
    # never over an existing output, never with nothing to change
    assert (
        main(
            [
                "stamp",
                str(bad),
                "--model-type",
                "llama",
                "--architecture",
                "LlamaForCausalLM",
                "-o",
                str(tmp_path / "fixed"),
            ]
        )
        == ExitCode.CHECKPOINT
    )
    assert main(["stamp", str(bad), "-o", str(tmp_path / "x")]) == ExitCode.USAGE


def test_stamp_tokenizer(export, tiny_models, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(export.hf_dir / name, bare / name)
    assert not inspect_checkpoint(bare).tokenizer["present"]
    result = stamp_checkpoint(bare, tmp_path / "with-tok", tokenizer_dir=tiny_models[True])
    assert result.changes[0]["field"] == "tokenizer"
    report = inspect_checkpoint(result.out)
    assert report.tokenizer["present"] and report.tokenizer["vocab"] == report.shapes["vocab"]
    assert sha256_file(result.out / "tokenizer.json") == sha256_file(
        tiny_models[True] / "tokenizer.json"
    )
