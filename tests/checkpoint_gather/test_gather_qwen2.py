"""Gather a tiny Qwen2 from in-process stage servers: the Hugging Face and GGUF exports read back
with transformers give the source's logits; inspect names the family."""

from __future__ import annotations

import json

import pytest
import torch

from checkpoint_gather.gather import GatherOptions, StagePlan, gather_stages
from checkpoint_gather.inspect import inspect_checkpoint
from checkpoint_gather.weights_client import PullTarget
from tests.fixtures import STAGES, greedy, load_causal_lm, logits, stage_server


@pytest.fixture(scope="module")
def qwen2_models(tiny_qwen2_dir, tmp_path_factory):
    from models.tiny import build_tiny_qwen2

    tied = build_tiny_qwen2(
        tmp_path_factory.mktemp("qwen2-tied") / "tied", seed=3, tie_word_embeddings=True
    )
    return {False: tiny_qwen2_dir, True: tied}


@pytest.mark.parametrize("tied", [False, True])
def test_gathered_qwen2_reloads_with_the_source_logits(qwen2_models, tmp_path, tied):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    model_dir = qwen2_models[tied]
    options = GatherOptions(
        model=str(model_dir), out_dir=tmp_path / "out", gguf_types=("f32", "f16")
    )
    with stage_server(model_dir) as (_, _, endpoint):
        plans = [StagePlan(s, e, (PullTarget(endpoint, "peer-a", s, e),)) for s, e in STAGES]
        result = gather_stages(options, plans, tokenizer_dir=model_dir)
    reference = load_causal_lm(model_dir)
    ref_logits, ref_tokens = logits(reference), greedy(reference)

    config = json.loads((result.export.hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert torch.equal(logits(load_causal_lm(result.export.hf_dir)), ref_logits)

    diffs = {}
    for out_type, path in sorted(result.export.gguf_files.items()):
        reader = GGUFReader(str(path))
        assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen2"
        names = {t.name for t in reader.tensors}
        assert "blk.5.attn_v.bias" in names and ("output.weight" in names) is not tied
        model = load_causal_lm(path.parent, gguf_file=path.name)
        assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings is tied
        diffs[out_type] = ((logits(model) - ref_logits).abs().max().item(), greedy(model))
    print(
        f"tied={tied}: "
        + ", ".join(
            f"{t}: max|dlogit|={d:.2e} greedy-equal={g == ref_tokens}"
            for t, (d, g) in diffs.items()
        )
    )
    assert diffs["f32"][0] <= 1e-4 and diffs["f32"][1] == ref_tokens
    assert diffs["f16"][0] < 0.05

    f32 = result.export.gguf_files["f32"]
    ours = AutoTokenizer.from_pretrained(str(f32.parent), gguf_file=f32.name)
    theirs = AutoTokenizer.from_pretrained(str(model_dir))
    for text in ("The mayor plans the work.", "bd create, gt sling 0123 Paris?"):
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
    for checkpoint in (result.export.hf_dir, f32):
        report = inspect_checkpoint(checkpoint)
        assert report.architecture == "Qwen2ForCausalLM", report.to_text()
        assert report.architecture_check == {"ok": True}, report.to_text()


def test_gguf_pre_tokenizer_is_named_from_the_split_regex(tiny_model_dir, tiny_qwen2_dir):
    from base.errors import CheckpointError
    from checkpoint_gather.gguf_tokenizer import pre_tokenizer_name

    def tokenizer_json(model_dir):
        return json.loads((model_dir / "tokenizer.json").read_text())

    assert pre_tokenizer_name(tokenizer_json(tiny_model_dir)) == "gpt2"
    qwen2 = tokenizer_json(tiny_qwen2_dir)
    assert pre_tokenizer_name(qwen2) == "qwen2"
    qwen2["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,3}|\s+"
    with pytest.raises(CheckpointError, match="cannot name"):
        pre_tokenizer_name(qwen2)


def test_stamp_repairs_a_qwen2_checkpoint_declared_as_llama(tiny_qwen2_dir, tmp_path):
    from checkpoint_gather.stamp import stamp_checkpoint
    from pipeline_stages.loader import load_stage

    bad = stamp_checkpoint(
        tiny_qwen2_dir,
        tmp_path / "bad",
        architecture="LlamaForCausalLM",
        model_type="llama",
        allow_mismatch=True,
    )
    assert "tensors are Qwen2-layout" in bad.architecture_check["message"]
    assert inspect_checkpoint(bad.out).architecture_check["ok"] is False
    fixed = stamp_checkpoint(
        bad.out, tmp_path / "fixed", architecture="Qwen2ForCausalLM", model_type="qwen2"
    )
    assert fixed.architecture_check == {"ok": True}
    assert load_stage(fixed.out, 4, 6).is_last
