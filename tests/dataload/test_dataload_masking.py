"""Loss masking: only assistant tokens (and the EOS closing each assistant turn) count."""

from __future__ import annotations

import pytest

from dataload.losses import IGNORE_INDEX
from dataload.prompt_format import encode_prompt, render, render_segments
from dataload.schema import SFTExample
from dataload.tokenization import EncodeStats, encode_messages, encode_sft
from dataload.tokenizer import tokenizer_info
from tests.fixtures import sft_record

MULTI = [
    ("system", "You are a polecat."),
    ("user", "Claim the bead."),
    ("assistant", "$ bd update gt-1 --status in_progress"),
    ("user", "[tool output]\nUpdated gt-1"),
    ("assistant", "Claimed. Next: bd show gt-1"),
]


def _messages(turns):
    return [{"role": s, "content": t} for s, t in turns]


def _trained_runs(ids, labels):
    """Contiguous runs of counted tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("mode", ["completion", "chat"])
def test_segments_reproduce_render_and_the_inference_prompt(
    mode, tiny_tokenizer, smollm2_dir
) -> None:
    from dataload.tokenizer import load_tokenizer

    tok = tiny_tokenizer if mode == "completion" else load_tokenizer(smollm2_dir)
    msgs = _messages(MULTI)
    segments = render_segments(msgs, mode=mode, tokenizer=tok)
    assert "".join(s.text for s in segments) == render(
        msgs, mode=mode, tokenizer=tok, add_generation_prompt=False
    )
    trained = [s.trained for s in segments]
    if mode == "chat":  # the template's newline after the last <|im_end|> is context
        assert segments[-1] == type(segments[-1])("\n", False)
        trained = trained[:-1]
    assert trained == [False, True, False, True]
    # the context before the first answer is exactly what inference renders as the prompt
    assert segments[0].text == render(msgs[:2], mode=mode, tokenizer=tok)
    assert "bd update" in segments[1].text and "Claimed." in segments[3].text


def test_render_keeps_its_behaviour() -> None:
    msgs = [{"role": "system", "content": "s "}, {"role": "user", "content": " hi"}]
    assert render(msgs, mode="completion") == "system: s\n\nuser: hi\n\nassistant:"
    assert render(msgs, mode="completion", add_generation_prompt=False) == "system: s\n\nuser: hi"


def test_only_assistant_tokens_counted_checked_by_decoding(tiny_tokenizer) -> None:
    info = tokenizer_info(tiny_tokenizer)
    ids, labels = encode_messages(_messages(MULTI), tiny_tokenizer, eos_id=info.eos_id)
    runs = [tiny_tokenizer.decode(r) for r in _trained_runs(ids, labels)]
    assert runs == [
        " $ bd update gt-1 --status in_progress</s>",
        " Claimed. Next: bd show gt-1</s>",
    ]
    assert ids.count(info.eos_id) == 2  # one EOS after each assistant turn, nowhere else
    context = tiny_tokenizer.decode(
        [t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX]
    )
    assert "polecat" in context and "[tool output]" in context and "bd update" not in context
    # the first tokens are exactly the inference prompt's tokens
    prompt = encode_prompt(
        render(_messages(MULTI[:2]), mode="completion"), tiny_tokenizer, mode="completion"
    )
    assert ids[: len(prompt)] == prompt and all(
        lab == IGNORE_INDEX for lab in labels[: len(prompt)]
    )
    assert labels[len(prompt)] == ids[len(prompt)]


def test_chat_mode_masks_template_tokens(smollm2_dir) -> None:
    from dataload.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_dir)
    info = tokenizer_info(tok, smollm2_dir)
    ids, labels = encode_messages(_messages(MULTI), tok, eos_id=info.eos_id, mode="chat")
    runs = [tok.decode(r) for r in _trained_runs(ids, labels)]
    assert runs == [
        "$ bd update gt-1 --status in_progress<|im_end|>",
        "Claimed. Next: bd show gt-1<|im_end|>",
    ]
    assert tok.decode(ids) == render(
        _messages(MULTI), mode="chat", tokenizer=tok, add_generation_prompt=False
    )


def test_truncation_policies_are_counted(tiny_tokenizer) -> None:
    info = tokenizer_info(tiny_tokenizer)
    long_answer = SFTExample.model_validate(
        sft_record(1, [("user", "Do it."), ("assistant", "word " * 80)])
    )
    long_prompt = SFTExample.model_validate(
        sft_record(2, [("user", "context " * 80), ("assistant", "ok")])
    )
    short = SFTExample.model_validate(sft_record(3, [("user", "Hi"), ("assistant", "bd ready")]))
    stats = EncodeStats()
    kept = [
        encode_sft(e, tiny_tokenizer, eos_id=info.eos_id, max_length=48, stats=stats)
        for e in (long_answer, long_prompt, short)
    ]
    assert kept[0] is not None and len(kept[0]) == 48 and kept[0].truncated
    assert kept[0].input_ids[-1] != info.eos_id  # a cut answer has lost its EOS
    assert kept[1] is None and kept[2] is not None and not kept[2].truncated
    assert (stats.examples, stats.kept, stats.truncated, stats.dropped_no_target) == (3, 2, 1, 1)
    assert stats.dropped_ids == [long_prompt.id]
    stats = EncodeStats()
    dropped = encode_sft(
        long_answer,
        tiny_tokenizer,
        eos_id=info.eos_id,
        max_length=48,
        truncation="drop",
        stats=stats,
    )
    assert dropped is None and stats.dropped_too_long == 1 and stats.kept == 0
