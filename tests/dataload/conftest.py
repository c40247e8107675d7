from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "sft"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from dataload.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def corpus_build(tmp_path_factory) -> Path:
    """The corpus pipeline's output for the sample rig (its Python API, as `node0 corpus build`)."""
    from corpus import CorpusConfig, build_corpus

    result = build_corpus(
        CorpusConfig(), [REPO / "samples" / "gastown-rig"], tmp_path_factory.mktemp("corpus")
    )
    return result.run_dir


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_record(
    i: int, turns: list[tuple[str, str]], role: str = "polecat", task: str = "code-change"
) -> dict:
    return {
        "id": f"sft-{i:016x}",
        "role": role,
        "task": task,
        "turns": [{"speaker": s, "text": t} for s, t in turns],
        "quality_score": 1.0,
        "provenance": {
            "source_kind": "doc",
            "file": "x.md",
            "line": 1,
            "line_end": 1,
            "rig": "gastown",
            "role": role,
            "sha256": "0" * 64,
        },
    }
