"""A training micro-batch computed in pieces, each in its own compute turn.

A training forward or backward of a micro-batch takes hundreds of milliseconds on a CPU stage,
an inference decode step a few. Run as one turn of the compute gate, every training call would
hold the sessions on this daemon back for all of it (measured before: inference ITL p95 ×16.6
while training ran, bench/shared_compute.py). So a micro-batch runs as a chain of pieces: the
stage's entry (embedding, mask, rotary), each decoder block, and on the last stage the LM head
and loss in chunks of positions. Each piece is one turn (``turn(piece)``: the gate's training
turn with the job's adapter set and train mode, run on the daemon's compute thread), so an
inference batch waits for at most one piece.

The chain keeps each piece's input as a detached leaf that requires grad and its output. The
backward runs the pieces in reverse, each in its own turn: ``backward(output, grad)``, then the
gradient of its input is the next piece's. By the chain rule this is the same gradient as one
autograd pass over the whole stage (the parameters of a block are used in that block only);
only the order of the float sums in the chunked loss differs, so the tests compare with
tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dataload.losses import next_token_targets, target_cross_entropy_sum, target_logprob_rows
from models.stage_module import DecoderStage

Turn = Callable[[Callable[[], Any]], Any]  # runs a piece in its turn and returns its result


@dataclass
class PieceChain:
    """One row group's forward through the stage, kept for its backward."""

    rows: slice
    entry: tuple[torch.Tensor, torch.Tensor] | None = None  # (the rows of the leaf, embedded)
    links: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (in, out)
    losses: list[torch.Tensor] = field(default_factory=list)  # last stage: scaled loss chunks
    # (scalars; per-row log-prob chunks (rows,) when the stage returns sequence log-probs)
    head_input: torch.Tensor | None = None  # last stage: the input of the loss chunks


@dataclass
class MicrobatchPieces:
    """A micro-batch's forward: the stage's input and one chain per group of rows."""

    leaf: torch.Tensor
    chains: list[PieceChain]
    output_shape: tuple[int, ...] = ()  # other stages: the hidden states' (a grad's) shape


def piece_sizes(stage: DecoderStage, rows: int, positions: int, piece_tokens: int) -> tuple:
    """Rows per block piece and positions per LM-head piece for a budget of block tokens.

    Rows are independent through a stage (each attends within itself), so a block piece takes
    whole rows, at least one. An LM-head piece costs what ``piece_tokens`` tokens of a block
    cost: head weights ÷ block weights fewer positions (SmolLM2: about 8×).
    """
    group = max(1, min(rows, piece_tokens // max(positions, 1)))
    block = sum(p.numel() for p in stage.blocks[0].parameters()) if stage.blocks else 1
    head = stage.lm_head.weight.numel() if stage.lm_head is not None else block
    head_tokens = max(1, piece_tokens * block // head)
    return group, max(1, head_tokens // group)


def _link(chain: PieceChain, value: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Run one piece on a detached copy of ``value`` that keeps its own gradient."""
    inp = value.detach().requires_grad_(torch.is_grad_enabled())
    out = fn(inp)
    chain.links.append((inp, out))
    return out


def _forward_rows(
    stage: DecoderStage,
    chain: PieceChain,
    leaf: torch.Tensor,
    mask: torch.Tensor | None,
    targets: torch.Tensor | None,
    *,
    turn: Turn,
    convert: Callable[[torch.Tensor], torch.Tensor],
    loss_scale: float,
    head_positions: int,
    sequence: bool = False,
) -> torch.Tensor:
    grad = torch.is_grad_enabled()
    rows = leaf[chain.rows]
    hidden, shared = turn(
        lambda: stage.begin(
            convert(rows), attention_mask=None if mask is None else mask[chain.rows]
        )
    )
    if grad and hidden.requires_grad:
        chain.entry = (rows, hidden)
    for block in stage.blocks:
        hidden = turn(
            lambda h=hidden, b=block: _link(chain, h, lambda x: stage.run_block(b, x, shared))
        )
    if not stage.is_last:
        return hidden
    head_input = hidden.detach().requires_grad_(grad)
    chain.head_input = head_input
    reduce = target_logprob_rows if sequence else target_cross_entropy_sum
    shape = (hidden.shape[0],) if sequence else ()
    total = torch.zeros(shape, dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[1], head_positions):
        cut = slice(start, start + head_positions)
        piece = turn(
            lambda cut=cut: reduce(stage.logits(head_input[:, cut]), targets[chain.rows, cut])
        )
        total += piece.detach()
        if grad:
            chain.losses.append(piece * loss_scale)
    return total


def forward_pieces(
    stage: DecoderStage,
    leaf: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    turn: Turn,
    convert: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    targets_from: torch.Tensor | None = None,
    loss_scale: float = 1.0,
    piece_tokens: int = 512,
    sequence: bool = False,
) -> tuple[MicrobatchPieces, torch.Tensor]:
    """Forward one micro-batch in pieces; grad mode decides whether the chains are kept.

    Args:
        leaf: token ids (first stage) or hidden states as received (a leaf that requires
            grad: its gradient is what the backward returns).
        convert: to the stage's dtype and device (inside the first piece, so in the graph).
        targets_from: the last stage's labels ``(batch, seq)``.
        loss_scale: each loss chunk is multiplied by this before its backward.
        piece_tokens: the work of one piece, in tokens of one decoder block (see
            :func:`piece_sizes`).
        sequence: the last stage returns each row's summed log-probability of its counted
            targets ``(batch,)`` (DPO's ``log π(y|x)``) instead of the summed loss; its
            backward then takes the gradient of those sums.

    Returns:
        the kept pieces and the stage's output: hidden states, or on the last stage the
        summed (unscaled) loss as a float32 scalar without a graph (``sequence``: the rows'
        float32 log-prob sums).
    """
    if stage.is_last and targets_from is None:
        raise ValueError("the last stage needs labels")
    rows, positions = leaf.shape[:2]
    group, head_positions = piece_sizes(stage, rows, positions, piece_tokens)
    targets = None
    if targets_from is not None:
        targets = next_token_targets(targets_from)
    pieces = MicrobatchPieces(leaf, [])
    outs = []
    for first in range(0, rows, group):
        chain = PieceChain(slice(first, first + group))
        pieces.chains.append(chain)
        outs.append(
            _forward_rows(
                stage,
                chain,
                leaf,
                mask,
                targets,
                turn=turn,
                convert=convert,
                loss_scale=loss_scale,
                head_positions=head_positions,
                sequence=sequence,
            )
        )
    if stage.is_last and sequence:
        out = torch.cat(outs, dim=0)
        pieces.output_shape = tuple(out.shape)
        return pieces, out
    if stage.is_last:
        return pieces, torch.stack(outs).sum()
    out = torch.cat(outs, dim=0)
    pieces.output_shape = tuple(out.shape)
    return pieces, out


def _backward_rows(chain: PieceChain, grad: torch.Tensor | None, turn: Turn) -> None:
    if chain.head_input is not None:
        for piece in chain.losses:  # a row-wise piece takes the gradient of its rows' sums
            turn(lambda p=piece: p.backward(None if p.dim() == 0 else grad.to(p)))
        grad = chain.head_input.grad
    for inp, out in reversed(chain.links):
        if grad is None:
            return  # nothing downstream depends on this piece (no trainable parameter after it)
        if out.requires_grad:
            turn(
                lambda out=out, g=grad: torch.autograd.backward(
                    out, g.to(device=out.device, dtype=out.dtype)
                )
            )
        grad = inp.grad
    if chain.entry is not None and grad is not None:
        rows, hidden = chain.entry
        # into the embedding (trained) and the leaf's rows
        turn(lambda: torch.autograd.backward(hidden, grad.to(dtype=hidden.dtype)))


def backward_pieces(
    pieces: MicrobatchPieces, grad: torch.Tensor | None, *, turn: Turn
) -> torch.Tensor | None:
    """Backward of a kept micro-batch, piece by piece; the gradient of the stage's input.

    ``grad`` is the gradient of the stage's output (None on the last stage, whose output is
    the loss; ``(batch,)`` when it returned sequence log-probs). Returns None when the input
    needs no gradient (token ids).
    """
    for chain in pieces.chains:
        _backward_rows(chain, None if grad is None else grad[chain.rows], turn)
    pieces.chains.clear()
    return pieces.leaf.grad if pieces.leaf.requires_grad else None
