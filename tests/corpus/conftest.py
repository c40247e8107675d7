from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RIG = REPO / "samples" / "gastown-rig"


@pytest.fixture(scope="session")
def sample_rig() -> Path:
    return SAMPLE_RIG


@pytest.fixture(scope="session")
def scrubber():
    from corpus.scrub import Scrubber

    return Scrubber()
