"""Issue-19 blind set: credentials by context, vendor formats, phones, cards, look-alikes.

The set was generated (``gen_blind_secrets.py``) and committed before the scrubber code was
read; its first-run figures are in FIRST_RUN.md. Targets: recall >= 99.5%, look-alikes kept
>= 95%.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from corpus import Scrubber
from tests.corpus.scoring import evaluate, load, report

DATA = Path(__file__).with_name("blind_secrets.jsonl")
GENERATOR = Path(__file__).with_name("gen_blind_secrets.py")


@pytest.fixture(scope="module")
def result() -> dict:
    # the corpus build's policy (configs/corpus/default.yaml): private addresses are kept
    r = evaluate(load(DATA), Scrubber(keep_private_ips=True))
    print("\n" + report("blind set (issue 19)", r))
    return r


def test_blind_set_is_its_generators_output() -> None:
    records = runpy.run_path(str(GENERATOR), run_name="blind_generator")["OUT"]
    written = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    assert written == DATA.read_text(encoding="utf-8")
    assert sum(r["label"] == "secret" for r in records) >= 500
    assert sum(r["label"] == "clean" for r in records) >= 250


def test_blind_recall(result: dict) -> None:
    assert result["recall"] >= 0.995, report("blind", result)


def test_blind_lookalikes_kept(result: dict) -> None:
    assert result["kept"] >= 0.95, report("blind", result)
