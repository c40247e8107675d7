"""The per-hop history a pipeline session keeps for failover: chunks as sent, rewinds."""

import torch

from inference.pipeline_session import _Hop


def _hop_with(*sizes: int) -> _Hop:
    hop = _Hop(record=None, client=None)
    start = 0
    for size in sizes:
        hop.add(torch.arange(start, start + size).view(1, size))
        start += size
    return hop


def test_keep_inside_a_chunk_cuts_it_and_drops_the_rest():
    hop = _hop_with(5, 1, 1, 3)
    hop.keep(6)
    assert [c.shape[1] for c in hop.sent] == [5, 1]
    assert hop.length == 6
    hop.keep(3)
    assert [c.tolist() for c in hop.sent] == [[[0, 1, 2]]]
    assert hop.length == 3


def test_keep_at_the_end_or_past_it_changes_nothing():
    hop = _hop_with(4, 1)
    hop.keep(5)
    assert [c.shape[1] for c in hop.sent] == [4, 1]
    hop.keep(9)
    assert torch.equal(torch.cat(hop.sent, dim=1), torch.arange(5).view(1, 5))


def test_keep_zero_forgets_everything():
    hop = _hop_with(2, 1)
    hop.keep(0)
    assert hop.sent == []
    assert hop.length == 0


def test_hidden_states_keep_their_trailing_dimensions():
    hop = _Hop(record=None, client=None)
    hop.add(torch.randn(1, 4, 8))
    hop.add(torch.randn(1, 1, 8))
    hop.keep(2)
    assert [tuple(c.shape) for c in hop.sent] == [(1, 2, 8)]


def test_keep_at_the_length_touches_no_chunk():
    """A decode step (position == what was sent) must not walk the history."""
    hop = _hop_with(*([1] * 1000))
    first = hop.sent[0]
    hop.keep(1000)
    assert hop.length == 1000 and hop.sent[0] is first and len(hop.sent) == 1000
