"""node.rebalance against an in-memory record store: concurrent claims, confirmations."""

from __future__ import annotations

import random
import threading

import pytest

from base.dht_records import StageRecord
from node import rebalance
from node.config import PlacementConfig
from node.rebalance import Placer

N = 30


class Store:
    """Stands in for the DHT: records by (peer, span), read and written under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.records: dict[tuple[str, tuple[int, int]], StageRecord] = {}

    def fetch(self, _dht, model):
        with self.lock:
            return [r for r in self.records.values() if r.model == model]

    def announce(self, _dht, records, _ttl, **_):
        with self.lock:
            for r in records:
                self.records[(r.peer_id, r.span)] = r


@pytest.fixture
def store(monkeypatch):
    s = Store()
    monkeypatch.setattr(rebalance, "fetch_records", s.fetch)
    monkeypatch.setattr(rebalance, "announce", s.announce)
    return s


def record(peer, span, state="online"):
    return StageRecord(
        model="m",
        start=span[0],
        end=span[1],
        num_layers=N,
        endpoint=peer,
        peer_id=peer,
        state=state,
    )


def placer(peer, seed=0, **config):
    settings = {"join_jitter": 0.05, "rebalance_period": 0.001, **config}
    return Placer(
        None,
        "m",
        peer,
        num_layers=N,
        num_blocks=8,
        config=PlacementConfig(**settings),
        announce_ttl=5.0,
        settle=0.2,
        rng=random.Random(seed),
    )


def test_peers_claiming_at_the_same_moment_end_on_different_spans(store):
    store.announce(None, [record("a", (0, 8))], 5)
    claimed = {}

    def join(peer, seed):
        claimed[peer] = placer(peer, seed).claim(lambda span, state: record(peer, span, state))

    threads = [threading.Thread(target=join, args=(p, i)) for i, p in enumerate("bcd")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed.values()) == [(8, 16), (16, 24), (24, 30)]


def test_a_move_needs_agreeing_checks_and_a_balance_move_waits_min_stay(store):
    spans = [(0, 8), (0, 8), (16, 24), (24, 30)]  # [8, 16) lost its only replica
    store.announce(None, [record(p, s) for p, s in zip("abcd", spans, strict=True)], 5)
    b = placer("b", confirmations=2, min_stay=1000.0)
    b.next_check = 0.0
    assert b.check((0, 8)) is None  # first check agrees with nothing yet
    b.next_check = 0.0
    move = b.check((0, 8))
    assert move is not None and move.target == (8, 16)  # a repair ignores min_stay
    # a peer that does not see its own record yet decides nothing
    stranger = placer("zz")
    stranger.next_check = 0.0
    assert stranger.check((0, 8)) is None


def test_stages_auto_needs_a_size_and_the_shipped_auto_configs_validate():
    from pydantic import ValidationError

    from base.config_loader import load_yaml_config
    from node.config import CONFIGS_DIR, DaemonConfig, SwarmPreset, resolve_preset_path

    with pytest.raises(ValidationError, match="needs placement.num_blocks or"):
        DaemonConfig.model_validate({"stages": "auto"})
    preset, _ = load_yaml_config(resolve_preset_path("smollm2-auto"), SwarmPreset)
    assert [p.stages for p in preset.peers] == ["auto"] * 4
    config, _ = load_yaml_config(CONFIGS_DIR / "daemon" / "smollm2-auto.yaml", DaemonConfig)
    assert config.stages == "auto" and config.placement.memory_budget_mb


def test_a_memory_budget_gives_the_layers_it_holds(tiny_model_dir):
    import torch

    from base.errors import ConfigError
    from node.rebalance import blocks_for_budget
    from pipeline_stages.loader import stage_bytes

    one = stage_bytes(tiny_model_dir, 2, 3, torch.float32)
    ends = (
        max(  # embeddings or LM head, whichever is larger (a span may be first or last)
            stage_bytes(tiny_model_dir, 0, 1, torch.float32),
            stage_bytes(tiny_model_dir, 5, 6, torch.float32),
        )
        - one
    )
    kv = 2 * 2 * 16 * 4 * 8  # tiny config: K and V, 2 KV heads of 16, float32, 8 positions
    budget_mb = (ends + 3 * (one + kv) + 1) / 2**20
    assert blocks_for_budget(tiny_model_dir, torch.float32, budget_mb, 8) == 3
    with pytest.raises(ConfigError, match="holds no layer"):
        blocks_for_budget(tiny_model_dir, torch.float32, ends / 2**20, 8)
