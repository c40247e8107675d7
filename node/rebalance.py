"""The daemon's side of automatic placement: claim a span safely, watch whether to move.

The policy (which span, whether a move is worth it) is :mod:`node.placement`; this module does
the talking to the DHT around it:

- **Claiming** (:meth:`Placer.claim`): wait a random jitter, read the swarm's records, choose a
  span, announce it as ``joining``, wait ``settle`` seconds for the DHT to carry it, read again.
  If a peer with a lower id announced a span overlapping it meanwhile, withdraw (announce the
  claim ``offline``) and choose again with that peer's claim in view. Two peers that join at
  once therefore end on different spans instead of the same one forever.
- **Watching** (:meth:`Placer.check`): every ``rebalance_period`` (plus jitter) a hosting peer
  asks the policy whether to move. A move is made only after ``confirmations`` consecutive
  checks agree on it (a record that is late for one heartbeat is not a lost span), and a move
  for balance alone not within ``min_stay`` seconds of the last one; a repair of uncovered
  layers is never held back by ``min_stay``.

The move itself (drain, load, announce) is the daemon's (:meth:`node.daemon.Daemon.move`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from base.dht_records import StageRecord, announce, fetch_records
from base.errors import ConfigError
from node.config import PlacementConfig
from node.placement import Move, choose_span, conflicting_joiners, placed_spans, plan_move

log = logging.getLogger(__name__)

MAX_CLAIM_ROUNDS = 10

ClaimRecord = Callable[[tuple[int, int], str], StageRecord]  # (span, state) -> record


def blocks_for_budget(model_dir, dtype, budget_mb: float, max_cache_tokens: int) -> int:
    """How many layers fit ``budget_mb`` MiB: a middle layer's weights plus its KV-cache for
    ``max_cache_tokens`` positions each, after the larger of embeddings and LM head (a span may
    be the first or the last)."""
    from pipeline_stages.loader import load_config, stage_bytes

    config = load_config(model_dir)
    n = config.num_hidden_layers
    middle = n // 2
    per_layer = stage_bytes(model_dir, middle, middle + 1, dtype)
    ends = max(
        stage_bytes(model_dir, 0, 1, dtype) - per_layer,
        stage_bytes(model_dir, n - 1, n, dtype) - per_layer,
    )
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_layer = 2 * heads * head_dim * dtype.itemsize * max_cache_tokens
    blocks = int((budget_mb * 2**20 - ends) // (per_layer + kv_per_layer))
    if blocks < 1:
        need = (ends + per_layer + kv_per_layer) / 2**20
        raise ConfigError(
            f"placement.memory_budget_mb {budget_mb:g} holds no layer of {model_dir} "
            f"(one layer with its KV-cache and the embeddings needs {need:.1f} MiB)",
            hint="raise memory_budget_mb, lower max_cache_tokens, or set num_blocks",
        )
    return min(blocks, n)


class Placer:
    """Claims a span for this peer and decides when it should move.

    Args:
        dht: this daemon's DHT peer.
        model: the model name records carry.
        peer_id: this peer's id.
        num_layers: the model's decoder layers.
        num_blocks: layers this peer holds.
        config: the placement settings.
        announce_ttl: the expiration of an announced claim.
        settle: seconds from announcing a claim to checking it.
    """

    def __init__(
        self,
        dht,
        model: str,
        peer_id: str,
        *,
        num_layers: int,
        num_blocks: int,
        config: PlacementConfig,
        announce_ttl: float,
        settle: float,
        rng: random.Random | None = None,
    ):
        self.dht = dht
        self.model = model
        self.peer_id = peer_id
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.config = config
        self.announce_ttl = announce_ttl
        self.settle = settle
        self.rng = rng or random.Random()
        self._pending: Move | None = None
        self._agreeing = 0
        self.last_move = time.monotonic()
        self.next_check = time.monotonic() + self._period()

    def _period(self) -> float:
        return self.config.rebalance_period + self.rng.uniform(0, self.config.join_jitter)

    def records(self) -> list[StageRecord]:
        return fetch_records(self.dht, self.model)

    def _others(self, records: list[StageRecord]) -> list[StageRecord]:
        return [r for r in records if r.peer_id != self.peer_id]

    def claim(
        self, record_for: ClaimRecord, *, target: tuple[int, int] | None = None
    ) -> tuple[int, int] | None:
        """Choose a span (or take ``target``, a move's) and hold it as ``joining``.

        Returns None when it lost every round to a peer with a lower id (with ``target``: the
        one round), and the caller stays where it is and tries again later.
        """
        time.sleep(self.rng.uniform(0, self.config.join_jitter))
        for _ in range(1 if target else MAX_CLAIM_ROUNDS):
            spans = placed_spans(self._others(self.records()), self.model)
            span = target or choose_span(
                spans, self.num_layers, self.num_blocks, peer_id=self.peer_id
            )
            announce(self.dht, [record_for(span, "joining")], self.announce_ttl)
            time.sleep(self.settle)
            rivals = conflicting_joiners(self.records(), self.model, self.peer_id, span)
            if not rivals:
                log.info("claimed layers [%d, %d)", *span)
                return span
            log.info(
                "layers [%d, %d) also claimed by %s; choosing again",
                *span,
                ", ".join(r.peer_id[-8:] for r in rivals),
            )
            announce(self.dht, [record_for(span, "offline")], self.announce_ttl)
            time.sleep(self.rng.uniform(0, self.config.join_jitter))
        return None

    def check(self, span: tuple[int, int]) -> Move | None:
        """Whether to move now (called every heartbeat; looks at the swarm every period)."""
        now = time.monotonic()
        if now < self.next_check:
            return None
        self.next_check = now + self._period()
        records = self.records()
        spans = placed_spans(records, self.model)
        if not any(s.peer_id == self.peer_id and (s.start, s.end) == span for s in spans):
            return None  # our own record is not visible yet: the swarm view is not current
        move = plan_move(
            spans,
            self.peer_id,
            self.num_layers,
            self.num_blocks,
            balance_quality=self.config.balance_quality,
        )
        if move is None:
            self._pending, self._agreeing = None, 0
        elif self._pending is not None and move.target == self._pending.target:
            self._pending, self._agreeing = move, self._agreeing + 1
        else:
            self._pending, self._agreeing = move, 1
        if move is None or self._agreeing < self.config.confirmations:
            if move is not None:
                log.info(
                    "would move [%d, %d) -> [%d, %d): %s (check %d of %d)",
                    *move.current,
                    *move.target,
                    move.reason,
                    self._agreeing,
                    self.config.confirmations,
                )
            return None
        repair = move.after.uncovered < move.before.uncovered
        if not repair and now - self.last_move < self.config.min_stay:
            return None
        self._pending, self._agreeing = None, 0
        return move

    def moved(self) -> None:
        self.last_move = time.monotonic()


class KeepAnnouncing:
    """Re-announce some records every ``period`` seconds on a thread (a claim while its span
    loads, which may take longer than a record lives)."""

    def __init__(self, dht, records: list[StageRecord], *, period: float, ttl: float):
        self._stop = threading.Event()
        self._records = records
        self._thread = threading.Thread(
            target=self._run, args=(dht, records, period, ttl), daemon=True, name="claim"
        )

    def _run(self, dht, records, period, ttl) -> None:
        while not self._stop.wait(period):
            try:
                announce(dht, records, ttl)
            except Exception:
                log.warning("re-announcing the claim failed", exc_info=True)

    def __enter__(self) -> KeepAnnouncing:
        if self._records:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
