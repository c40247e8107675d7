"""The client's route wait is bounded: it polls until ``timeout`` (an injected clock), then names
what is missing; it returns as soon as the records cover every layer."""

from __future__ import annotations

import pytest

from base import swarm_view
from base.dht_records import StageRecord
from base.errors import SwarmError
from base.swarm_view import ROUTE_WAIT_S, SwarmView


class _Clock:
    """Stands in for the ``time`` module: ``sleep`` advances ``monotonic`` without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _record(start: int, end: int) -> StageRecord:
    return StageRecord(
        model="m", start=start, end=end, num_layers=4, endpoint=f"e{start}", peer_id=f"p{start}"
    )


def _view(monkeypatch, answers: list[list[StageRecord]]) -> tuple[SwarmView, _Clock, list]:
    """A view without a DHT whose records are ``answers`` in turn (the last one repeats)."""
    clock, polls = _Clock(), []
    monkeypatch.setattr(swarm_view, "time", clock)
    view = object.__new__(SwarmView)
    view.model = "m"

    def records() -> list[StageRecord]:
        polls.append(clock.now)
        return answers[min(len(polls), len(answers)) - 1]

    view.records = records
    return view, clock, polls


def test_missing_layers_are_named_once_the_wait_runs_out(monkeypatch):
    view, clock, polls = _view(monkeypatch, [[_record(0, 2)]])
    with pytest.raises(SwarmError, match="layers 2-3 are served by no online peer"):
        view.wait_for_route()
    assert clock.now - 1000.0 == pytest.approx(ROUTE_WAIT_S)  # no longer than its bound
    assert len(polls) == int(ROUTE_WAIT_S / 0.5) + 1


def test_no_wait_means_one_look(monkeypatch):
    view, _, polls = _view(monkeypatch, [[_record(0, 2)]])
    with pytest.raises(SwarmError):
        view.wait_for_route(timeout=0)
    assert len(polls) == 1


def test_the_route_is_returned_as_soon_as_the_records_arrive(monkeypatch):
    late = [_record(0, 2), _record(2, 4)]
    view, _, polls = _view(monkeypatch, [[_record(0, 2)], [_record(0, 2)], late])
    assert [(r.start, r.end) for r in view.wait_for_route()] == [(0, 2), (2, 4)]
    assert len(polls) == 3
