"""Recency wins: how an artifact's time is read, and which of its versions is the newest.

Every record type has a ``version`` tuple; a later tuple is a newer version. Times are
normalized to :func:`stamp` strings (fixed-width UTC ISO 8601), so versions compare the same
whatever offset or precision the source wrote. Ties are broken by position: the later file,
then the later line, is newer (an append-only export appends the newest version last).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


def parse_timestamp(value: Any) -> float | None:
    """Seconds since the epoch for an ISO 8601 string (naive = UTC) or a number; else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.timestamp()


def stamp(ts: float | None) -> str:
    """``2025-02-23T09:40:00.000000Z`` for a time; ``""`` (older than any time) for None."""
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Versioned(Protocol):
    @property
    def version(self) -> tuple: ...


V = TypeVar("V", bound=Versioned)


@dataclass(frozen=True)
class Superseded(Generic[V]):
    """An older version and the version that won over it."""

    old: V
    winner: V
    identical: bool
    """Same content as the winner (an exact repeat), not merely an older version."""


@dataclass
class Newest(Generic[V]):
    """The newest version per artifact key, and every version that lost."""

    winners: dict[str, V] = field(default_factory=dict)
    superseded: list[Superseded[V]] = field(default_factory=list)


def newest(
    records: Iterable[V], key: Callable[[V], str], content: Callable[[V], object]
) -> Newest[V]:
    """Group ``records`` by ``key`` and keep the one with the greatest ``version``.

    Args:
        records: versions of any number of artifacts.
        key: the artifact a record is a version of (a bead id, a session id, a formula name).
        content: what makes two versions identical (e.g. a sha256 of the content).
    """
    groups: dict[str, list[V]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    out: Newest[V] = Newest()
    for name in sorted(groups):
        versions = sorted(groups[name], key=lambda r: r.version)
        winner = versions[-1]
        out.winners[name] = winner
        out.superseded.extend(
            Superseded(old, winner, content(old) == content(winner)) for old in versions[:-1]
        )
    return out
