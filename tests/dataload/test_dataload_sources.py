"""Reading data: malformed lines are reported with file and line; corpus builds load."""

from __future__ import annotations

import json

import pytest

from base.errors import ConfigError, DataError
from dataload.config import DataConfig
from dataload.loader import build_loaders
from dataload.losses import IGNORE_INDEX
from tests.fixtures import sft_record, write_jsonl

GOOD = [("user", "What next?"), ("assistant", "$ bd ready")]


def _bad_file(tmp_path):
    bad_schema = sft_record(3, [("user", "a"), ("user", "b")])  # no assistant turn at the end
    return write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            sft_record(1, GOOD),
            "{not json",
            sft_record(2, GOOD),
            json.dumps(bad_schema),
            "",
            sft_record(4, GOOD),
        ],
    )


def test_malformed_lines_reported_with_file_and_line(tmp_path, tiny_tokenizer) -> None:
    path = _bad_file(tmp_path)
    with pytest.raises(DataError) as err:
        build_loaders(DataConfig(train=[path]), tokenizer=tiny_tokenizer)
    message = str(err.value)
    assert "3 malformed line(s)" in message
    for line, reason in (
        (2, "invalid JSON"),
        (4, "the last turn must be an assistant turn"),
        (5, "blank line"),
    ):
        assert f"{path}:{line}: " in message
        assert reason in message
    assert err.value.exit_code == 8


def test_non_strict_skips_but_still_reports(tmp_path, tiny_tokenizer, caplog) -> None:
    path = _bad_file(tmp_path)
    loader = build_loaders(DataConfig(train=[path], strict=False), tokenizer=tiny_tokenizer).train
    assert len(loader.items) == 3
    report = loader.describe()
    assert [m.split(": ")[0] for m in report["malformed_lines"]] == [
        f"{path}:2",
        f"{path}:4",
        f"{path}:5",
    ]
    assert report["files"][0]["lines"] == 6
    assert sum("skipping malformed line" in r.message for r in caplog.records) == 3


def test_missing_paths_and_chat_without_template_fail_closed(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_loaders(DataConfig(train=[tmp_path / "nope.jsonl"]), model_dir=tiny_model_dir)
    path = write_jsonl(tmp_path / "ok.jsonl", [sft_record(1, GOOD)])
    with pytest.raises(ConfigError, match="chat template"):
        build_loaders(DataConfig(train=[path], prompt_mode="chat"), model_dir=tiny_model_dir)


def test_corpus_build_output_loads(corpus_build, smollm2_dir) -> None:
    """`node0 corpus build` output of samples/gastown-rig → SFT and DPO batches."""
    sft = build_loaders(
        DataConfig(train=[corpus_build], max_length=512, batch_size=4), model_dir=smollm2_dir
    )
    manifest = json.loads((corpus_build / "manifest.json").read_text())
    report = sft.train.describe()
    assert report["tokenization"]["examples"] == manifest["counts"]["sft"]["total"]
    assert (
        len(sft.train.items) + report["tokenization"]["dropped_no_target"]
        == manifest["counts"]["sft"]["total"]
    )
    assert report["malformed_lines"] == []
    assert len(report["files"]) == sum(1 for k in manifest["outputs"] if k.startswith("sft/"))
    batch = next(iter(sft.train.batches()))
    assert batch.counted_tokens > 0 and batch.input_ids.shape[0] == 4
    text = sft.tokenizer.decode(batch.labels[0][batch.labels[0] != IGNORE_INDEX])
    assert text.endswith(sft.tokenizer.eos_token)
    # role / task filters select partitions
    mayor = build_loaders(
        DataConfig(train=[corpus_build], roles=["mayor"]), model_dir=smollm2_dir
    ).train
    assert len(mayor.items) == manifest["counts"]["sft"]["by_role"]["mayor"]
    dpo = build_loaders(
        DataConfig(kind="dpo", train=[corpus_build], max_length=1024, batch_size=2),
        model_dir=smollm2_dir,
    )
    assert len(dpo.train.items) == manifest["counts"]["dpo"]["total"]
    pairs = next(iter(dpo.train.batches()))
    chosen, rejected = pairs.split(pairs.batch.labels)
    assert chosen.shape == rejected.shape and pairs.pairs == 2
    assert ((chosen[:, 1:] != IGNORE_INDEX).sum(1) > 0).all()


def test_schema_and_formatter_users_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dataload.schema, dataload.prompt_format, dataload.jsonl_reader; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
