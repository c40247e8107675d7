"""The averaging protocol's decisions without replica processes: result and state checksums,
who copies whose state, settings, the failed-round exception, and a replica with another
adapter configuration refusing (one in-process DHT)."""

from __future__ import annotations

import pickle

import pytest
import torch
from pydantic import ValidationError

from lora.allreduce_guard import GroupRoundFailed
from lora.averaging import (
    AveragingConfigError,
    _Checksum,
    checksums_agree,
    pack_checksum,
    resync_plan,
    unpack_checksum,
)
from lora.config import AveragingSettings, LoraSettings


def _noisy(tensors: list[torch.Tensor], relative: float, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        t * (1 + relative * torch.randn(t.shape, generator=generator, dtype=t.dtype))
        for t in tensors
    ]


def test_result_checksums_tolerate_float_rounding_and_catch_one_unaveraged_part():
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 64, generator=generator), torch.randn(3_000_000, generator=generator)]
    checksum, rtol = _Checksum(), AveragingSettings().checksum_rtol
    # replicas hold local + (mean - local): equal to a few ulps, not bitwise
    assert checksums_agree(checksum(grads), checksum(_noisy(grads, 3e-7)), rtol)
    partial = [t.clone() for t in grads]
    partial[1][:131_072] = torch.randn(131_072, generator=generator)  # one 512 KB part stayed local
    assert not checksums_agree(checksum(grads), checksum(partial), rtol)
    assert not checksums_agree(checksum(grads), checksum(grads[:1]), rtol)
    assert not checksums_agree(checksum(grads), "garbage", rtol)
    nan = [torch.full((4,), float("nan"))]  # every replica non-finite: NaN mean everywhere
    assert checksums_agree(checksum(nan), checksum(nan), rtol)


def test_state_checksums_catch_one_diverged_adam_step_but_not_rounding_drift():
    def train(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        torch.manual_seed(0)
        lora_a = torch.nn.Parameter(torch.empty(8, 576).uniform_(-0.04, 0.04))
        lora_b = torch.nn.Parameter(torch.zeros(576, 8))
        optimizer = torch.optim.AdamW([lora_a, lora_b], lr=1e-5)
        for grad in grads:  # (576, 16): A's and B's gradient side by side
            lora_a.grad, lora_b.grad = grad[:, :8].T.contiguous(), grad[:, 8:16].contiguous()
            optimizer.step()
        state = optimizer.state_dict()["state"]
        return [lora_a, lora_b] + [state[i][k] for i in sorted(state) for k in sorted(state[i])]

    generator = torch.Generator().manual_seed(3)
    mean = [torch.randn(576, 16, generator=generator) for _ in range(5)]
    local = [g + torch.randn(576, 16, generator=generator) for g in mean]
    checksum, rtol = _Checksum(), AveragingSettings().state_checksum_rtol

    def gathered(tensors: list[torch.Tensor]) -> list[float]:  # as the all-gather carries it
        return unpack_checksum(pack_checksum(checksum(tensors)))

    reference = gathered(train(mean))
    assert len(pack_checksum(reference)) == 4 * len(reference)
    assert checksums_agree(reference, gathered(train(_noisy(mean, 3e-7))), rtol)
    # the last step applied a local gradient instead of the mean (lr 1e-5: a small difference)
    assert not checksums_agree(reference, gathered(train(mean[:4] + local[4:])), rtol)
    assert not checksums_agree(reference, gathered(train(mean[:4])), rtol)  # a step missing
    with pytest.raises(ValueError):  # a malformed gather entry: left out of the state check
        unpack_checksum([1.0, 2.0])


def test_resync_source_is_highest_step_then_majority_then_lowest_peer_id():
    same, other = [1.0, 0.5, 2.0, -1.0], [1.0, 0.9, 2.0, -1.0]
    assert resync_plan({"a": (same, 4), "b": (same, 4)}, 1e-3) == (None, [])
    assert resync_plan({"a": (same, 4)}, 1e-3) == (None, [])
    assert resync_plan({"c": (same, 4), "b": (other, 4), "a": (other, 4)}, 1e-3) == ("a", ["c"])
    assert resync_plan({"c": (same, 5), "b": (other, 4), "a": (other, 4)}, 1e-3) == (
        "c",
        ["a", "b"],
    )
    assert resync_plan({"b": (same, 4), "a": (other, 4)}, 1e-3) == ("a", ["b"])


def test_group_round_failed_reaches_the_host_with_the_group():
    failed = GroupRoundFailed("CancelledError: ", {"peer1": {"nonce": "x"}, "peer2": None})
    again = pickle.loads(pickle.dumps(failed))  # it crosses from the averager process
    assert isinstance(again, GroupRoundFailed)
    assert again.gathered == {"peer1": {"nonce": "x"}, "peer2": None}
    assert str(again) == "CancelledError: "


def test_default_timeouts_keep_a_lone_round_short_and_are_validated():
    settings = AveragingSettings()
    assert settings.min_matchmaking_time < settings.matchmaking_timeout <= 10.0
    with pytest.raises(ValidationError, match="shorter than matchmaking_timeout"):
        AveragingSettings(min_matchmaking_time=9.0)
    with pytest.raises(ValidationError, match="request_timeout"):
        AveragingSettings(request_timeout=5.0)
    with pytest.raises(ValidationError, match="min_group_size"):
        AveragingSettings(target_group_size=2, min_group_size=3)


@pytest.mark.integration
def test_a_replica_with_other_lora_settings_refuses_to_average():
    from base.dht import start_dht
    from lora.averaging import StageGradientAverager, averaging_prefix

    dht = start_dht([])
    prefix = averaging_prefix("tiny", 0, 2, "run", "code-review")
    settings = AveragingSettings()
    incumbent = StageGradientAverager(
        dht,
        prefix=prefix,
        params=[torch.nn.Parameter(torch.zeros(4, 8))],
        settings=settings,
        lora=LoraSettings(rank=4, alpha=8),
    )
    try:
        with pytest.raises(AveragingConfigError, match="another adapter configuration") as info:
            StageGradientAverager(
                dht,
                prefix=prefix,
                params=[torch.nn.Parameter(torch.zeros(4, 8))],
                settings=settings,
                lora=LoraSettings(rank=4, alpha=16),
            )
        assert info.value.exit_code == 3
    finally:
        incumbent.shutdown()
        dht.shutdown()
