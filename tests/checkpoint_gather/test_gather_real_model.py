"""SmolLM2-135M through the export pipeline (3 stage sources -> HF + GGUF f32/f16/q8_0):
transformers' GGUF loader generates the same greedy tokens as the Hugging Face model."""

from __future__ import annotations

import json

import pytest
import torch

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "A polecat implements a bead by",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
NEW_TOKENS = 32


def _greedy(model, tokenizer) -> list[list[int]]:
    """32 greedy tokens per prompt; the 5 prompts as one left-padded batch (same for every
    model compared, so equal weights give equal tokens)."""
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[:, batch["input_ids"].shape[1] :].tolist()


def _last_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smollm2_export_greedy_parity(smollm2_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from checkpoint_gather.export import export_checkpoint
    from checkpoint_gather.inspect import inspect_checkpoint
    from checkpoint_gather.sources import read_local_stage

    torch.set_num_threads(2)
    config = AutoConfig.from_pretrained(str(smollm2_dir), local_files_only=True)
    n = config.num_hidden_layers
    sources = [
        read_local_stage(smollm2_dir, s, e, num_layers=n, source_id=f"stage-{s}")
        for s, e in ((0, 10), (10, 20), (20, n))
    ]
    result = export_checkpoint(
        tmp_path / "out",
        config,
        sources,
        tokenizer_dir=smollm2_dir,
        model="smollm2-135m",
        gguf_types=("f32", "f16", "q8_0"),
        generation_config=smollm2_dir / "generation_config.json",
    )
    del sources
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    reference = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    ref_tokens = _greedy(reference, tokenizer)
    ref_logits = _last_logits(reference, tokenizer)
    del reference
    exported = AutoModelForCausalLM.from_pretrained(str(result.hf_dir), dtype=torch.float32)
    assert torch.equal(_last_logits(exported.eval(), tokenizer), ref_logits)
    del exported
    figures = {}
    for out_type, path in result.gguf_files.items():
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
        tokens = _greedy(model, tokenizer)
        diff = (_last_logits(model, tokenizer) - ref_logits).abs().max().item()
        pairs = zip(tokens, ref_tokens, strict=True)
        agree = sum(a == b for t, r in pairs for a, b in zip(t, r, strict=True))
        identical = sum(t == r for t, r in zip(tokens, ref_tokens, strict=True))
        figures[out_type] = {
            "max_abs_logit_diff": diff,
            "token_agreement": agree / (len(PROMPTS) * NEW_TOKENS),
            "identical_prompts": identical,
            "bytes": path.stat().st_size,
        }
        del model
    print(json.dumps(figures, indent=2))
    assert figures["f32"]["max_abs_logit_diff"] <= 1e-4
    assert figures["f32"]["identical_prompts"] == len(PROMPTS)
    assert figures["f16"]["max_abs_logit_diff"] < 0.1
    assert figures["q8_0"]["token_agreement"] > 0.5
    report = inspect_checkpoint(result.gguf_files["f32"])
    assert report.architecture_check == {"ok": True} and report.score == 100
    assert report.tokenizer["pre"] == "smollm" and report.chat_template
    # the embedded tokenizer gives the source's token ids
    gguf_tok = AutoTokenizer.from_pretrained(
        str(result.gguf_files["f16"].parent), gguf_file=result.gguf_files["f16"].name
    )
    for prompt in PROMPTS:
        assert gguf_tok(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
