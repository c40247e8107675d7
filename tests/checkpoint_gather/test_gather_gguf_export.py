"""GGUF export: transformers' GGUF loader gives the source's logits (f32; f16 and bf16 within
their measured tolerances) and greedy tokens."""

from __future__ import annotations

import pytest
import torch

from base.errors import CheckpointError
from checkpoint_gather.coverage import check_coverage
from checkpoint_gather.export import assemble_state
from checkpoint_gather.gguf_export import export_gguf
from checkpoint_gather.gguf_tokenizer import tokenizer_fields
from tests.fixtures import greedy, load_causal_lm, load_config, logits, stage_sources

# bf16 keeps 8 significant bits (f16: 11). Measured on the tiny models, whose logits reach 4.3
# (std 1.2): f16 moved them by 0.009 at most, bf16 by 0.089 (docs/gather.md). Greedy tokens are
# not asserted for bf16: these random models' top two logits come as close as 0.03.
BF16_LOGITS_ATOL = 0.2


def _export(src, out, out_type):
    config = load_config(src)
    sources = stage_sources(src)
    state = assemble_state(check_coverage(config, [m for m, _ in sources]), sources)
    fields = tokenizer_fields(model=None, tokenizer_dir=src, vocab_size=config.vocab_size)
    return export_gguf(
        out,
        config,
        state,
        tokenizer=fields,
        out_type=out_type,
        name="tiny",
        provenance={"source": str(src)},
    )


@pytest.mark.parametrize("tied", [False, True])
def test_gguf_round_trip(tiny_models, tmp_path, tied):
    src = tiny_models[tied]
    reference = load_causal_lm(src)
    ref_logits = logits(reference)
    ref_tokens = greedy(reference)
    results = {}
    for out_type in ("f32", "f16", "bf16", "q8_0"):
        path = _export(src, tmp_path / f"tiny-{out_type}.gguf", out_type)
        model = load_causal_lm(tmp_path, gguf_file=path.name)
        assert model.config.tie_word_embeddings is tied
        diff = (logits(model) - ref_logits).abs().max().item()
        same = greedy(model) == ref_tokens
        results[out_type] = (diff, same, path.stat().st_size)
    print(
        f"tied={tied}: "
        + ", ".join(
            f"{t}: max|dlogit|={d:.2e} greedy-equal={s} {n} bytes"
            for t, (d, s, n) in results.items()
        )
    )
    assert results["f32"][0] <= 1e-4 and results["f32"][1]
    assert results["f16"][0] < 0.05
    assert results["bf16"][0] < BF16_LOGITS_ATOL
    assert results["q8_0"][0] < 1.0  # loads and stays close; figures printed above
    assert results["q8_0"][2] < results["f16"][2] == results["bf16"][2] < results["f32"][2]


def test_embedded_tokenizer_tokenizes_like_the_source(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    src = tiny_models[False]
    path = _export(src, tmp_path / "tiny.gguf", "f32")
    ours = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    theirs = AutoTokenizer.from_pretrained(str(src))
    for text in ("The mayor plans the work.", "bd create, gt sling 0123 Paris?", "  x\ny"):
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
    assert ours.eos_token_id == theirs.eos_token_id and ours.bos_token_id == theirs.bos_token_id


def test_refusals(tiny_models, tmp_path):
    src = tiny_models[False]
    with pytest.raises(CheckpointError, match="unknown GGUF type"):
        _export(src, tmp_path / "x.gguf", "q4_k")
    path = _export(src, tmp_path / "x.gguf", "f32")
    with pytest.raises(CheckpointError, match="already exists"):
        _export(src, path, "f32")
    config = load_config(src)
    fields = tokenizer_fields(model=None, tokenizer_dir=src, vocab_size=config.vocab_size)
    state = assemble_state(
        *(lambda s: (check_coverage(config, [m for m, _ in s]), s))(stage_sources(src))
    )
    state.pop("model.layers.0.self_attn.q_proj.weight")
    with pytest.raises(CheckpointError, match="layers 0 are incomplete"):
        export_gguf(tmp_path / "y.gguf", config, state, tokenizer=fields)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]
    assert torch.is_tensor(next(iter(state.values())))
