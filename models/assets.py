"""Convert a catalog model's GGUF into a cached Hugging Face directory, once.

Loading SmolLM2 from GGUF takes ~50 s (gguf-py parses the vocabulary more than once); the cached
directory loads in about a second. transformers refuses to ``save_pretrained`` a model loaded from
GGUF, so the weights are moved into a fresh model built from the same config (without its
``quantization_config``) before saving.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from base.atomic import atomic_dir
from base.errors import CheckpointError
from models.catalog import ModelSpec, get_spec, prepared_dir, source_gguf_path
from provenance import environment_versions, sha256_file

log = logging.getLogger(__name__)

ASSET_RECORD = "node0_asset.json"


def _convert(spec: ModelSpec, gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, filename = str(gguf_path.parent), gguf_path.name
    log.info("reading tokenizer from %s (slow: gguf vocabulary parse)", gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=filename)
    log.info("reading weights from %s (dequantizing to fp32)", gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=filename, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def asset_record(path: Path) -> dict[str, Any]:
    return json.loads((path / ASSET_RECORD).read_text())


def prepare_model(name: str, *, force: bool = False) -> Path:
    """Return the prepared Hugging Face directory for ``name``, converting it if needed."""
    spec = get_spec(name)
    target = prepared_dir(name)
    if (target / ASSET_RECORD).is_file() and not force:
        return target
    gguf_path = source_gguf_path(spec)
    try:
        # force: the old directory is replaced only once the new one is complete
        with atomic_dir(target, overwrite=True) as tmp:
            _convert(spec, gguf_path, tmp)
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            record = {
                "model": name,
                "source": {
                    "package": spec.pip_name,
                    "file": spec.gguf_filename,
                    "sha256": sha256_file(gguf_path),
                },
                "files": files,
                "versions": environment_versions(),
            }
            (tmp / ASSET_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"converting {gguf_path} failed: {exc}") from exc
    log.info("prepared %s at %s", name, target)
    return target
