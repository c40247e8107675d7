"""The canonical losses: transformers' causal-LM loss, sequence log-probs, DPO."""

from __future__ import annotations

import math

import pytest
import torch

from dataload.losses import (
    IGNORE_INDEX,
    cross_entropy_sum,
    dpo_loss,
    dpo_rewards,
    masked_cross_entropy,
    sequence_logprobs,
)


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # prompt
    labels[1, 9:] = IGNORE_INDEX  # padding
    labels[2, :8] = IGNORE_INDEX
    attention = (labels != IGNORE_INDEX) | (torch.arange(12) < 5)
    return ids, labels, attention.long()


def test_masked_cross_entropy_equals_transformers_loss(tiny_model) -> None:
    ids, labels, attention = _batch(tiny_model.config.vocab_size)
    with torch.no_grad():
        out = tiny_model(input_ids=ids, attention_mask=attention, labels=labels)
    ours = masked_cross_entropy(out.logits, labels)
    diff = abs(ours.item() - out.loss.item())
    print(f"masked_cross_entropy vs LlamaForCausalLM(labels=…): {diff:.2e}")
    assert diff < 1e-6
    # micro-batch sums over the step's count = the mean over one big batch
    parts = [cross_entropy_sum(out.logits[i : i + 1], labels[i : i + 1]) for i in range(3)]
    total = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert abs(total.item() - out.loss.item()) < 1e-6
    with pytest.raises(ValueError):
        masked_cross_entropy(out.logits, torch.full_like(labels, IGNORE_INDEX))


def test_sequence_logprobs_by_hand() -> None:
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX]]
    )
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[0, 1, 3] + logp[0, 2, 1], logp[1, 0, 4]])
    assert torch.allclose(sequence_logprobs(logits, labels), expected, atol=1e-6)
    segments = torch.tensor([[1, 1, 2, 2], [1, 1, 1, 0]])
    per_segment = sequence_logprobs(logits, labels, segments)
    assert torch.allclose(
        per_segment,
        torch.stack(
            [
                torch.stack([logp[0, 1, 3] * 0, logp[0, 1, 3] + logp[0, 2, 1]]),
                torch.stack([logp[1, 0, 4], logp[1, 0, 4] * 0]),
            ]
        ),
        atol=1e-6,
    )


def test_dpo_loss_is_ln2_at_step_0_and_matches_hand_computation(tiny_model) -> None:
    ids, labels, attention = _batch(tiny_model.config.vocab_size, seed=3)
    with torch.no_grad():
        logits = tiny_model(input_ids=ids, attention_mask=attention).logits
    logps = sequence_logprobs(logits, labels)
    chosen, rejected = logps[:2], logps[1:]
    # step 0: the policy is the reference (LoRA B = 0)
    loss0 = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone())
    assert abs(loss0.item() - math.log(2)) < 1e-7
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.5, -16.0])
    beta = 0.1
    by_hand = [
        -math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
        for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True)
    ]
    assert torch.allclose(
        dpo_loss(pc, pr, rc, rr, beta, reduction="none"), torch.tensor(by_hand), atol=1e-6
    )
    assert abs(dpo_loss(pc, pr, rc, rr, beta).item() - sum(by_hand) / 2) < 1e-6
    chosen_r, rejected_r = dpo_rewards(pc, pr, rc, rr, beta=beta)
    assert torch.allclose(chosen_r, torch.tensor([0.1, -0.1]))
    assert torch.allclose(rejected_r, torch.tensor([-0.05, 0.1]))


def _pair(n: int, chosen: list[tuple[str, str]], rejected: list[tuple[str, str]]):
    from dataload.schema import DPOPair

    prov = {
        "source_kind": "transcript",
        "file": "t.jsonl",
        "line": n,
        "line_end": n,
        "rig": "gastown",
        "role": "polecat",
        "sha256": "0" * 64,
    }
    turns = lambda pairs: [{"speaker": s, "text": t} for s, t in pairs]  # noqa: E731
    return DPOPair.model_validate(
        {
            "id": f"dpo-{n:016x}",
            "role": "polecat",
            "task": "code-change",
            "prompt": turns([("system", "You are a polecat."), ("user", f"Task {n}: what next?")]),
            "chosen": turns(chosen),
            "rejected": turns(rejected),
            "failure_mode": "ignored_conventions",
            "quality_score": 1.0,
            "chosen_provenance": prov,
            "rejected_provenance": prov,
        }
    )


def test_dpo_loss_matches_trl(tiny_model_dir, tiny_tokenizer, tmp_path) -> None:
    """TRL's DPOTrainer loss on our batch == ours (policy: LoRA with random B; reference:
    adapters disabled). TRL is a test-only dependency."""
    pytest.importorskip("trl", reason="trl not installed (test-only parity check)")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from dataload.dpo import collate_dpo, encode_dpo
    from dataload.tokenizer import tokenizer_info

    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )  # B != 0, so the policy differs from the ref
    dummy = Dataset.from_list(
        [{"prompt": "user: a\n\nassistant:", "chosen": " b", "rejected": " c"}]
    )
    trainer = DPOTrainer(
        model=base,
        peft_config=lora,
        train_dataset=dummy,
        processing_class=tiny_tokenizer,
        args=DPOConfig(
            output_dir=str(tmp_path), report_to=[], beta=0.1, use_cpu=True, save_strategy="no"
        ),
    )
    model = trainer.model.eval()
    info = tokenizer_info(tiny_tokenizer)
    pairs = [
        _pair(
            1,
            [
                ("assistant", "$ bd ready"),
                ("user", "[tool output]\ngt-1"),
                ("assistant", "$ gt sling gt-1 nux"),
            ],
            [("assistant", "$ git log --oneline")],
        ),
        _pair(
            2,
            [("assistant", "$ bd close gt-2")],
            [("assistant", "$ sed -i s/open/closed/ .beads/issues.jsonl")],
        ),
    ]
    batch = collate_dpo(
        [encode_dpo(p, tiny_tokenizer, eos_id=info.eos_id, max_length=128) for p in pairs],
        pad_id=info.pad_id,
    )
    b = batch.batch
    inputs = {
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "completion_mask": (b.labels != IGNORE_INDEX).long(),
    }
    with torch.no_grad():
        theirs = trainer._compute_loss(model, inputs, return_outputs=False)
        policy = sequence_logprobs(
            model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels
        )
        with model.disable_adapter():
            ref = sequence_logprobs(
                model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits, b.labels
            )
    ours = dpo_loss(*batch.split(policy), *batch.split(ref), beta=0.1)
    diff = abs(ours.item() - theirs.item())
    print(
        f"dpo_loss vs TRL DPOTrainer: ours {ours.item():.6f}, trl {theirs.item():.6f}, "
        f"diff {diff:.2e}"
    )
    assert abs(ours.item() - math.log(2)) > 1e-2  # a real (non-step-0) comparison
    assert diff < 1e-5
