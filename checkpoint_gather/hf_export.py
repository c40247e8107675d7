"""Write a Hugging Face checkpoint directory from an assembled state dict, atomically.

Steps, in this order (each one's output is the next one's input):

1. verify the tensors against the config (:func:`checkpoint_gather.coverage.check_tensors`);
   a tied LM head must equal the embedding and is not written;
2. in a temporary sibling of the output: the weights in the export's dtype
   (:mod:`checkpoint_gather.dtypes`: a tensor already in it is written byte for byte, any other
   converted once, one shard at a time) as ``model.safetensors`` or shards +
   ``model.safetensors.index.json`` above ``max_shard_bytes`` (when durable, their writeback
   to the disk starts at once, :func:`base.atomic.flush_early`), ``config.json`` (its
   ``dtype`` the one written),
   ``generation_config.json``, tokenizer files (copied byte for byte, then loaded once to prove
   they work), and ``node0_export.json`` (provenance, tensor and file digests);
3. re-read what was written: safetensors headers against the config (the same architecture check
   a stage runs before loading);
4. rename the temporary directory to the output.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from base.atomic import atomic_dir, flush_early
from base.errors import CheckpointError
from base.precision import torch_dtype
from checkpoint_gather.coverage import check_tensors
from checkpoint_gather.dtypes import resolve_export_dtype, to_export_dtype
from checkpoint_gather.manifest import file_sha256
from checkpoint_gather.sources import dtype_name, tensor_sha256
from models import EMBED, LM_HEAD, check_architecture, family_of, index_checkpoint
from provenance import sha256_file, sha256_json

log = logging.getLogger(__name__)

EXPORT_RECORD = "node0_export.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# Files that make up a tokenizer in a Hugging Face directory (whichever of them exist).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "vocab.json")


def export_config(config, dtype: str = "float32"):
    """A clean config of the model's family (its architectures/model_type set, ``dtype`` —
    the dtype of the weights written with it —, no quantization) from a config object or dict;
    the family comes from the config."""
    config = family_of(config).export_config(config)
    config.dtype = torch_dtype(dtype)
    return config


def tokenizer_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    return [directory / n for n in TOKENIZER_FILES if (directory / n).is_file()]


@dataclass(frozen=True)
class TokenizerCheck:
    """A tokenizer directory proven to load: its files' sha256 and its number of tokens."""

    source: Path
    files: dict[str, str]  # file name -> sha256
    size: int  # len(tokenizer)


def _load_tokenizer(directory: Path, src: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"the tokenizer from {src} does not load: {exc}") from exc


def _tokenizer_digests(directory: Path) -> dict[str, str]:
    files = tokenizer_files(directory)
    if not any(p.name in _TOKENIZER_CORE for p in files):
        raise CheckpointError(f"{directory} holds no tokenizer (none of {list(_TOKENIZER_CORE)})")
    return {p.name: sha256_file(p) for p in files}


def check_tokenizer(src: str | Path) -> TokenizerCheck | None:
    """Load the tokenizer in ``src`` once (ahead of an export, e.g. while ``node0 gather``
    pulls); None if its files changed while it loaded (the export then loads its copy)."""
    src = Path(src)
    before = _tokenizer_digests(src)
    size = len(_load_tokenizer(src, src))
    return TokenizerCheck(src, before, size) if _tokenizer_digests(src) == before else None


def copy_tokenizer(
    src: str | Path, dst: Path, *, vocab_size: int, checked: TokenizerCheck | None = None
) -> list[str]:
    """Copy a tokenizer's files from ``src`` into ``dst`` and prove they load and fit the model.

    With ``checked`` (:func:`check_tokenizer` of ``src``), copies with exactly the checked bytes
    are proven by that load; otherwise the copies are loaded. Returns the copied file names.
    """
    src = Path(src)
    files = tokenizer_files(src)
    if not any(p.name in _TOKENIZER_CORE for p in files):
        raise CheckpointError(f"{src} holds no tokenizer (none of {list(_TOKENIZER_CORE)})")
    for path in files:
        shutil.copyfile(path, dst / path.name)
    if checked is not None and checked.source == src and _tokenizer_digests(dst) == checked.files:
        size = checked.size
    else:
        size = len(_load_tokenizer(dst, src))
    if size > vocab_size:
        raise CheckpointError(
            f"the tokenizer from {src} has {size} tokens, more than "
            f"the model's vocabulary of {vocab_size}"
        )
    return [p.name for p in files]


def _generation_config(generation_config, config):
    from transformers import GenerationConfig

    if generation_config is None:
        return GenerationConfig.from_model_config(config)
    if isinstance(generation_config, GenerationConfig):
        return generation_config
    if isinstance(generation_config, (str, Path)):
        path = Path(generation_config)
        return GenerationConfig.from_pretrained(str(path.parent if path.is_file() else path))
    return GenerationConfig(**dict(generation_config))


def _write_weights(
    state: Mapping[str, torch.Tensor],
    out: Path,
    max_shard_bytes: int,
    dtype: torch.dtype,
    known_digests: Mapping[str, str],
) -> tuple[list[str], dict[str, str]]:
    """Write ``state`` in ``dtype``; the shard files and the sha256 of every tensor written
    (``known_digests`` for those written as they are, computed for the converted ones)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    # shards sized by the tensors as written (on meta: no memory)
    layout = {n: torch.empty(t.shape, dtype=dtype, device="meta") for n, t in state.items()}
    split = split_torch_state_dict_into_shards(layout, max_shard_size=max_shard_bytes)
    digests: dict[str, str] = {}
    for file_name, names in split.filename_to_tensors.items():
        shard = {n: to_export_dtype(n, state[n].detach(), dtype).contiguous() for n in names}
        for n, tensor in shard.items():
            same = tensor.dtype == state[n].dtype
            digests[n] = (known_digests.get(n) if same else None) or tensor_sha256(tensor)
        save_file(shard, str(out / file_name), metadata={"format": "pt"})
        del shard  # one converted shard in memory at a time
    if split.is_sharded:
        total = sum(t.numel() * dtype.itemsize for t in state.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": dict(sorted(split.tensor_to_filename.items())),
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sorted(split.filename_to_tensors), digests


def _verify_written(directory: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    check_architecture(config, index_checkpoint(directory))


def export_hf(
    out: str | Path,
    config,
    state: Mapping[str, torch.Tensor],
    *,
    tokenizer_dir: str | Path,
    generation_config=None,
    provenance: Mapping[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tensor_digests: Mapping[str, str] | None = None,
    durable: bool = True,
    tokenizer_check: TokenizerCheck | None = None,
    dtype: str | None = None,
) -> Path:
    """Write ``state`` (HF names, global layer indices) as a Hugging Face directory in one dtype.

    Args:
        out: the output directory; must not exist.
        config: the model's config (``PretrainedConfig`` or dict); its family (from
            ``model_type`` / ``architectures``) decides the tensors and the config class written.
        state: every tensor of the model; with tied embeddings an ``lm_head.weight`` equal to the
            embedding is accepted and not written.
        tokenizer_dir: directory with the tokenizer files to ship.
        generation_config: ``GenerationConfig``, dict, path, or None (derived from ``config``).
        provenance: recorded in ``node0_export.json`` (sources, base model, run id, …).
        max_shard_bytes: above this total size the weights are sharded with an index.
        tensor_digests: the tensors' sha256 if the caller already verified them (recorded in
            ``node0_export.json`` instead of hashing every tensor again).
        durable: fsync the result before it is published (:mod:`base.atomic`).
        tokenizer_check: ``tokenizer_dir`` already loaded (:func:`check_tokenizer`).
        dtype: the dtype written (``float32``, ``bfloat16``, ``float16``); None: the one
            ``state`` is in if all its tensors agree, else float32 (:mod:`checkpoint_gather.
            dtypes`).

    Returns:
        ``out``.

    Raises:
        CheckpointError: the tensors do not make the config's model, or a value does not fit
            ``dtype`` (named; nothing is written).
    """
    held = sorted({dtype_name(t.dtype) for t in state.values()})
    dtype = resolve_export_dtype(dtype, held).name
    config = export_config(config, dtype)
    specs = {n: (tuple(t.shape), dtype_name(t.dtype)) for n, t in state.items()}
    dropped = check_tensors(config, specs)
    if LM_HEAD in dropped and not torch.equal(state[LM_HEAD], state[EMBED]):
        raise CheckpointError(
            "embeddings are tied, but lm_head.weight differs from the token "
            "embedding; refusing to drop it"
        )
    weights = {n: t for n, t in state.items() if n not in dropped}
    generation = _generation_config(generation_config, config)
    out = Path(out)
    with atomic_dir(out, durable=durable) as tmp:
        shards, digests = _write_weights(
            weights, tmp, max_shard_bytes, torch_dtype(dtype), tensor_digests or {}
        )
        for shard in shards if durable else ():  # writeback runs while the rest is written
            flush_early(tmp / shard)
        config.save_pretrained(str(tmp))
        generation.save_pretrained(str(tmp))
        copied = copy_tokenizer(
            tokenizer_dir, tmp, vocab_size=config.vocab_size, checked=tokenizer_check
        )
        record = {
            "format": "huggingface",
            "config_sha256": sha256_json(config.to_dict()),
            "tied_word_embeddings": bool(config.tie_word_embeddings),
            "dtype": dtype,
            "tensors": dict(sorted(digests.items())),
            "tokenizer": {"source": str(tokenizer_dir), "files": copied},
            "weight_files": shards,
            "provenance": dict(provenance or {}),
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        _verify_written(tmp)
    log.info(
        "wrote Hugging Face checkpoint %s (%d tensors in %s, %d weight file(s))",
        out,
        len(weights),
        dtype,
        len(shards),
    )
    return out
