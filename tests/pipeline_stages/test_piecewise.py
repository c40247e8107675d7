"""A training micro-batch in pieces gives the gradients of one autograd pass over the stage, with
its pieces computed on another thread as in a daemon."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dataload.losses import cross_entropy_sum
from pipeline_stages.compute_thread import in_callers_modes
from pipeline_stages.loader import load_stage
from pipeline_stages.piecewise import backward_pieces, forward_pieces, piece_sizes


def counting_turn():
    """A daemon's turn: each piece runs on another thread (the scheduler's there), under the
    caller's grad mode, counted."""
    count = [0]
    compute = ThreadPoolExecutor(max_workers=1)

    def turn(piece):
        count[0] += 1
        return compute.submit(in_callers_modes(piece)).result()

    return turn, count


def grads(stage):
    return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("span", [(0, 3), (3, 6)])
@pytest.mark.parametrize("piece_tokens", [1, 12, 10_000])
def test_pieces_match_one_pass_on_a_middle_and_a_last_stage(tiny_model_dir, span, piece_tokens):
    torch.manual_seed(0)
    stage = load_stage(tiny_model_dir, *span)  # every weight trains: the strictest comparison
    hidden = stage.full_config.hidden_size
    first = stage.is_first
    rows, seq = 3, 7
    inputs = (
        torch.randint(0, stage.full_config.vocab_size, (rows, seq))
        if first
        else torch.randn(rows, seq, hidden)
    )
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row
    labels = torch.randint(0, stage.full_config.vocab_size, (rows, seq))
    labels[0, :3] = -100
    # padded positions attend to nothing: what a kernel gives them is arbitrary, and a loss
    # never counts them, so no gradient comes back for them
    grad_out = torch.randn(rows, seq, hidden) * mask[..., None]

    # reference: one forward, one backward
    leaf = inputs.clone().requires_grad_(not first)
    out = stage(leaf, attention_mask=mask)
    if stage.is_last:
        loss, _ = cross_entropy_sum(out, labels)
        (loss * 0.5).backward()
    else:
        out.backward(grad_out)
    want, want_input = grads(stage), leaf.grad
    stage.zero_grad(set_to_none=True)

    turn, count = counting_turn()
    leaf = inputs.clone().requires_grad_(not first)
    pieces, got = forward_pieces(
        stage,
        leaf,
        mask,
        turn=turn,
        targets_from=labels if stage.is_last else None,
        loss_scale=0.5,
        piece_tokens=piece_tokens,
    )
    if stage.is_last:
        torch.testing.assert_close(got, loss.detach(), rtol=1e-5, atol=1e-5)
        sent = backward_pieces(pieces, None, turn=turn)
    else:
        torch.testing.assert_close(got, out.detach(), rtol=1e-4, atol=1e-5)  # rows apart
        sent = backward_pieces(pieces, grad_out, turn=turn)
    have = grads(stage)
    assert sorted(have) == sorted(want)
    for name in want:
        # float32 sums in another order: within 1e-5 of the tensor's largest entry (a float64
        # pass differs from either float32 pass by as much, measured on the tiny model)
        scale = float(want[name].abs().max())
        torch.testing.assert_close(
            have[name],
            want[name],
            rtol=1e-4,
            atol=1e-5 * max(scale, 1.0),
            msg=lambda m, n=name: f"{n}: {m}",
        )
    if first:
        assert sent is None
    else:
        torch.testing.assert_close(sent, want_input, rtol=1e-4, atol=1e-5)
    group, head = piece_sizes(stage, rows, seq, piece_tokens)
    groups = -(-rows // group)
    blocks = span[1] - span[0]
    head_pieces = -(-seq // head) if stage.is_last else 0
    forward_turns = groups * (1 + blocks + head_pieces)
    assert count[0] >= forward_turns + groups * blocks  # every block's backward is its own turn


def test_a_piece_takes_whole_rows_and_head_chunks_cost_as_much_as_block_tokens(tiny_model_dir):
    stage = load_stage(tiny_model_dir, 3, 6)
    block = sum(p.numel() for p in stage.blocks[0].parameters())
    head = stage.lm_head.weight.numel()
    assert piece_sizes(stage, 8, 137, 128) == (1, max(1, 128 * block // head))
    assert piece_sizes(stage, 8, 30, 128)[0] == 4
    assert piece_sizes(stage, 2, 30, 10_000)[0] == 2
