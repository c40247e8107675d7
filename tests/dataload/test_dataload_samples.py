"""The shipped Gas Town conventions set and probes (issue 3, "learning for real")."""

from __future__ import annotations

import json
import re
import runpy

from dataload.config import DataConfig
from dataload.loader import build_loaders
from dataload.probes import load_probes, score_probes
from tests.fixtures import SAMPLES

TRAIN = SAMPLES / "gastown_conventions.train.jsonl"
HELDOUT = SAMPLES / "gastown_conventions.heldout.jsonl"
PROBES = SAMPLES / "probes.jsonl"


def _user_prompts(path) -> set[str]:
    return {
        t["text"]
        for line in path.read_text().splitlines()
        for t in json.loads(line)["turns"]
        if t["speaker"] == "user" and not t["text"].startswith("[tool output]")
    }


def test_generator_reproduces_the_shipped_files() -> None:
    module = runpy.run_path(str(SAMPLES / "make_gastown_conventions.py"))
    train, heldout, probes = module["build"]()
    for rows, path in ((train, TRAIN), (heldout, HELDOUT), (probes, PROBES)):
        expected = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        assert path.read_text(encoding="utf-8") == expected, f"{path.name} is stale"


def test_sample_set_loads_and_fits(smollm2_dir) -> None:
    data = build_loaders(
        DataConfig(train=[TRAIN], heldout=[HELDOUT], max_length=256), model_dir=smollm2_dir
    )
    assert len(data.train.items) == 150 and len(data.heldout.items) == 30
    for loader in (data.train, data.heldout):
        stats = loader.describe()["tokenization"]
        assert stats["truncated"] == 0 and stats["kept"] == stats["examples"]
        assert loader.describe()["malformed_lines"] == []
    assert not data.heldout.shuffle


def test_heldout_and_probe_prompts_are_not_training_prompts() -> None:
    train = _user_prompts(TRAIN)
    heldout = _user_prompts(HELDOUT)
    probes = {p.prompt[-1].text for p in load_probes(PROBES)}
    assert not train & heldout and not train & probes and not heldout & probes

    # phrasings differ too, not only the bead ids: compare with ids and names masked
    def shape(text: str) -> str:
        return re.sub(r"gt-[a-z0-9]{4}|\b[a-z]+(?= is (free|idle|available))", "X", text)

    assert not {shape(t) for t in train} & {shape(t) for t in heldout | probes}


def test_every_answer_shows_a_convention_and_probes_cover_them() -> None:
    probes = load_probes(PROBES)
    patterns = {p.convention: p.expect for p in probes}
    assert len(probes) == 20 and len(patterns) == 10
    for path in (TRAIN, HELDOUT):
        for line in path.read_text().splitlines():
            answer = "\n".join(
                t["text"] for t in json.loads(line)["turns"] if t["speaker"] == "assistant"
            )
            assert any(re.search(p, answer) for p in patterns.values()), answer
    for p in probes:
        assert not p.shows_convention(" ".join(t.text for t in p.prompt))  # no free hit
    answers = [
        "$ bd create --title x" if p.convention == "bd create" else "git log" for p in probes
    ]
    score = score_probes(probes, answers)
    assert score["shows_convention"] == 2 and score["probes"] == 20
    assert score["uses_avoided"] >= 2  # the bd ready probes' avoided pattern is git log
