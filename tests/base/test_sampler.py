import pytest
import torch

from base.sampler import SamplingParams, sample_token


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample_token(logits, SamplingParams(), position=5) == 1


def test_same_seed_and_position_give_same_draw_and_seeds_differ():
    torch.manual_seed(0)
    logits = torch.randn(1000)
    params = SamplingParams(temperature=1.0, seed=7)
    draws = [sample_token(logits, params, position=p) for p in range(50)]
    assert draws == [sample_token(logits, params, position=p) for p in range(50)]
    other = [sample_token(logits, SamplingParams(temperature=1.0, seed=8), p) for p in range(50)]
    assert draws != other
    assert len(set(draws)) > 10  # really sampling, not argmax


def test_top_k_restricts_support():
    logits = torch.arange(100, dtype=torch.float32)
    params = SamplingParams(temperature=5.0, top_k=3, seed=1)
    assert {sample_token(logits, params, p) for p in range(200)} <= {97, 98, 99}


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.7, seed=3)
    drawn = {sample_token(logits, params, p) for p in range(300)}
    assert drawn == {0, 1}


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}, {"seed": -1}]
)
def test_invalid_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)
