"""Padding vs packing: a model forward with per-example masking gives the same losses."""

from __future__ import annotations

import torch

from dataload.collate import pack_batch, pack_rows, pad_batch
from dataload.losses import IGNORE_INDEX, sequence_logprobs, token_logprobs
from dataload.tokenization import TokenizedExample, encode_messages
from dataload.tokenizer import tokenizer_info

CONVERSATIONS = [
    [("user", "Find work."), ("assistant", "$ bd ready")],
    [
        ("system", "You are the mayor."),
        ("user", "Give gt-2 to nux."),
        ("assistant", "Slinging it:\n$ gt sling gt-2 nux"),
    ],
    [
        ("user", "Done with gt-3."),
        ("assistant", "$ bd close gt-3"),
        ("user", "[tool output]\nClosed gt-3"),
        ("assistant", "Closed."),
    ],
    [("user", "New session."), ("assistant", "$ gt prime")],
    [
        ("user", "File a bug: the witness log is huge."),
        ("assistant", '$ bd create --title "Rotate the witness log" --type bug'),
    ],
    [
        ("user", "Tell the mayor gt-7 is blocked."),
        ("assistant", '$ gt mail send mayor/ -s "gt-7" -m "blocked on review"'),
    ],
]


def _examples(tokenizer) -> list[TokenizedExample]:
    eos = tokenizer_info(tokenizer).eos_id
    out = []
    for i, conv in enumerate(CONVERSATIONS):
        ids, labels = encode_messages(
            [{"role": s, "content": t} for s, t in conv], tokenizer, eos_id=eos
        )
        out.append(TokenizedExample(f"sft-{i:016x}", tuple(ids), tuple(labels)))
    return out


def test_pack_rows_first_fit_in_order(tiny_tokenizer) -> None:
    examples = _examples(tiny_tokenizer)
    width = 2 * max(len(e) for e in examples) + 10
    rows = pack_rows(examples, width)
    assert [e for row in rows for e in row] == examples  # order kept, nothing lost
    assert all(sum(len(e) for e in row) <= width for row in rows)
    assert len(rows) < len(examples)  # some rows hold several examples
    batch = pack_batch(rows, pad_id=2, max_length=width)
    assert batch.input_ids.shape == (len(rows), width)
    for row, members in enumerate(rows):
        starts = [0]
        for e in members[:-1]:
            starts.append(starts[-1] + len(e))
        for n, (start, e) in enumerate(zip(starts, members, strict=True), start=1):
            assert batch.position_ids[row, start] == 0
            assert batch.labels[row, start] == IGNORE_INDEX
            assert (batch.segment_ids[row, start : start + len(e)] == n).all()
            assert batch.input_ids[row, start : start + len(e)].tolist() == list(e.input_ids)
    assert batch.counted_tokens == sum(e.counted_tokens for e in examples)


def test_padding_and_packing_give_the_same_per_example_losses(tiny_tokenizer, tiny_model) -> None:
    examples = _examples(tiny_tokenizer)
    padded = pad_batch(examples, pad_id=2)
    width = 2 * max(len(e) for e in examples) + 10
    packed = pack_batch(pack_rows(examples, width), pad_id=2, max_length=width)
    assert packed.input_ids.shape[0] < len(examples) and packed.segment_ids.max() >= 2
    with torch.no_grad():
        logits_pad = tiny_model(
            input_ids=padded.input_ids, attention_mask=padded.attention_mask
        ).logits
        logits_pack = tiny_model(
            input_ids=packed.input_ids,
            attention_mask=packed.attention_bias(),
            position_ids=packed.position_ids,
        ).logits
        leaky = tiny_model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).logits
    per_pad = sequence_logprobs(logits_pad, padded.labels)  # (examples,)
    per_pack = sequence_logprobs(logits_pack, packed.labels, packed.segment_ids)
    flat_pack = per_pack[
        packed.segment_ids.max(dim=1).values[:, None] >= torch.arange(1, per_pack.shape[1] + 1)
    ]  # row-major, real segments
    assert flat_pack.shape == per_pad.shape
    diff = (flat_pack - per_pad).abs().max().item()
    print(f"padding vs packing: max per-example log-prob diff {diff:.2e}")
    assert diff < 1e-4
    assert (per_pad < 0).all()
    # token counts per example match too, so per-example mean losses match
    counts_pad = (padded.labels[:, 1:] != IGNORE_INDEX).sum(1)
    assert counts_pad.tolist() == [e.counted_tokens for e in examples]
    # without the block-diagonal mask, packed examples attend across boundaries: different
    per_leaky = sequence_logprobs(leaky, packed.labels, packed.segment_ids)
    assert (per_leaky - per_pack).abs().max().item() > 1e-3
    # the token-level mean over the batch agrees as well
    mean_pad = -token_logprobs(logits_pad, padded.labels).sum() / padded.counted_tokens
    mean_pack = -token_logprobs(logits_pack, packed.labels).sum() / packed.counted_tokens
    assert abs(mean_pad.item() - mean_pack.item()) < 1e-5
