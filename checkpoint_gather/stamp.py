"""``node0 stamp``: patch a checkpoint's metadata into a new copy, with a record of the change.

The input is never edited: it is copied into a temporary sibling of the output, the copy is
patched (``config.json``'s ``architectures`` / ``model_type``, the tokenizer files), a
``node0_stamp.json`` entry records the input's file digests and every field's before/after, and
the directory is renamed into place. The result must pass the architecture check a stage runs
before loading; a stamp that would leave the declaration contradicting the tensors is refused
unless ``allow_mismatch`` is set (to build a deliberately broken checkpoint for a test).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.atomic import atomic_dir
from base.errors import CheckpointError, Node0Error
from checkpoint_gather.hf_export import copy_tokenizer, tokenizer_files
from provenance import environment_versions, sha256_file

STAMP_RECORD = "node0_stamp.json"


@dataclass(frozen=True)
class StampResult:
    out: Path
    changes: list[dict[str, Any]]
    architecture_check: dict[str, Any]


def _file_digests(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _check(directory: Path, shown_as: Path) -> dict[str, Any]:
    """The stage loader's architecture check on ``directory``, messages naming ``shown_as``."""
    from transformers import AutoConfig

    from models import check_architecture, index_checkpoint

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        check_architecture(config, index_checkpoint(directory))
    except CheckpointError as exc:
        return {"ok": False, "message": str(exc).replace(str(directory), str(shown_as))}
    except Exception as exc:  # AutoConfig rejects an unknown model_type
        return {"ok": False, "message": f"config.json does not parse: {exc}"}
    return {"ok": True}


def stamp_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    architecture: str | None = None,
    model_type: str | None = None,
    tokenizer_dir: str | Path | None = None,
    allow_mismatch: bool = False,
) -> StampResult:
    """Copy ``src`` to ``out`` with the given metadata patched in.

    Raises:
        Node0Error: nothing to change (usage).
        CheckpointError: ``src`` is not an HF directory, ``out`` exists or lies inside ``src``,
            the tokenizer does not load or fit, or the result contradicts its tensors.
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    if architecture is None and model_type is None and tokenizer_dir is None:
        raise Node0Error("nothing to stamp: give --architecture, --model-type and/or --tokenizer")
    if not (src.is_dir() and (src / "config.json").is_file()):
        raise CheckpointError(
            f"{src} is not a Hugging Face checkpoint directory",
            hint="stamp works on HF directories; re-export a GGUF from one",
        )
    if out == src or src in out.parents:
        raise CheckpointError(f"the output {out} must lie outside the input {src}")
    before = _file_digests(src)
    with atomic_dir(out, durable=True) as tmp:
        for item in sorted(src.iterdir()):
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        config = json.loads((tmp / "config.json").read_text())
        changes: list[dict[str, Any]] = []
        if architecture is not None:
            changes.append(
                {
                    "field": "config.architectures",
                    "before": config.get("architectures"),
                    "after": [architecture],
                }
            )
            config["architectures"] = [architecture]
        if model_type is not None:
            changes.append(
                {
                    "field": "config.model_type",
                    "before": config.get("model_type"),
                    "after": model_type,
                }
            )
            config["model_type"] = model_type
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer_dir is not None:
            old = [p.name for p in tokenizer_files(tmp)]
            for name in old:
                (tmp / name).unlink()
            new = copy_tokenizer(tokenizer_dir, tmp, vocab_size=int(config["vocab_size"]))
            changes.append(
                {
                    "field": "tokenizer",
                    "before": old,
                    "after": new,
                    "source": str(Path(tokenizer_dir).resolve()),
                    "source_files": {n: sha256_file(Path(tokenizer_dir) / n) for n in new},
                }
            )
        check = _check(tmp, out)
        if not check["ok"] and not allow_mismatch:
            raise CheckpointError(
                "the stamped checkpoint would still contradict its tensors: "
                + check["message"].splitlines()[0],
                hint="stamp the architecture the tensors have",
            )
        history = []
        if (tmp / STAMP_RECORD).is_file():
            history = json.loads((tmp / STAMP_RECORD).read_text()).get("history", [])
        entry = {
            "stamped_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "input": {"path": str(src), "files": before},
            "changes": changes,
            "architecture_check": check,
            "output_files": _file_digests(tmp),
            "versions": environment_versions(),
        }
        (tmp / STAMP_RECORD).write_text(
            json.dumps({"history": history + [entry]}, indent=2, sort_keys=True) + "\n"
        )
    if _file_digests(src) != before:  # pragma: no cover - guards against an in-place bug
        raise CheckpointError(f"{src} changed while stamping")
    return StampResult(out=out, changes=changes, architecture_check=check)
