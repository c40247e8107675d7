"""Load one stage of a checkpoint: only the tensors of its layer range.

The family comes from the checkpoint's config through the registry
(:func:`models.check_architecture`, which also proves the declaration matches the tensors).
The module is built on the ``meta`` device (no memory), then each needed tensor is read from the
safetensors file(s) and assigned; nothing else of the checkpoint is ever materialised. A tensor
that is required but absent (or any module left on ``meta``) fails the load — there is no random
initialisation to fall back to.
"""

from __future__ import annotations

import ctypes
import logging
import math
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig

from base.errors import CheckpointError
from models import EMBED, LM_HEAD, check_architecture, index_checkpoint
from models.stage_module import DecoderStage
from pipeline_stages.mapped_weights import (
    STORED_DTYPES,
    advise_row_reads,
    converted_tensor,
    prune_stale_copies,
)

log = logging.getLogger(__name__)


def load_config(model_dir: str | Path):
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} has no config.json")
    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot parse {model_dir / 'config.json'}: {exc}") from exc


_CONVERT_CHUNK_BYTES = 8 << 20  # a conversion reads this much of the stored tensor at a time


def _read(
    path: Path,
    src: str,
    name: str,
    shape: tuple[int, ...],
    dtype,
    device,
    converted_dir: Path | None,
) -> torch.Tensor:
    """One tensor in ``dtype`` on ``device``. A conversion (a float32 checkpoint served in
    bfloat16) on the CPU maps a converted copy kept under ``converted_dir``
    (:mod:`pipeline_stages.mapped_weights`); without one, or onto a GPU, it goes a few MiB of
    rows at a time, so loading never holds a second full copy of the tensor in the stored
    dtype beside the converted one."""
    # a handle per tensor: the file pages a conversion reads are mapped into this process
    # until the handle closes, and would all count at once in its peak RSS
    with safe_open(str(path), framework="pt") as handle:
        tensor_slice = handle.get_slice(src)
        if tuple(tensor_slice.get_shape()) != shape:
            raise CheckpointError(
                f"{name}: shape {list(tensor_slice.get_shape())}, expected {list(shape)}"
            )
        stored = STORED_DTYPES.get(tensor_slice.get_dtype())
        if stored is None or stored == dtype or len(shape) == 0:
            return handle.get_tensor(src).to(device=device, dtype=dtype)
        if converted_dir is not None and torch.device(device).type == "cpu":
            mapped = converted_tensor(path, src, dtype, converted_dir)
            if mapped is not None:
                return mapped
        return _convert_in_memory(tensor_slice, shape, stored, dtype, device)


def _convert_in_memory(tensor_slice, shape, stored, dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    row_bytes = max(1, math.prod(shape[1:]) * stored.itemsize)
    rows = max(1, _CONVERT_CHUNK_BYTES // row_bytes)
    for first in range(0, shape[0], rows):
        out[first : first + rows] = tensor_slice[first : first + rows].to(device=device)
    return out


def _return_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc keeps them after the temporaries of a
    load are freed, and the process's resident set would not shrink)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def stage_bytes(model_dir: str | Path, start: int, end: int, dtype: torch.dtype) -> int:
    """Bytes the weights of layers ``[start, end)`` take in ``dtype`` (read from the shapes the
    checkpoint declares; nothing is loaded)."""
    config = load_config(model_dir)
    family = check_architecture(config, index_checkpoint(model_dir))
    last = end == config.num_hidden_layers
    shapes = family.expected_shapes(config, range(start, end), first=start == 0, last=last)
    return sum(math.prod(shape) for shape in shapes.values()) * dtype.itemsize


def load_stage(
    model_dir: str | Path,
    start: int,
    end: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    converted_dir: str | Path | None = None,
) -> DecoderStage:
    """Build the family's stage for layers ``[start, end)`` with weights from ``model_dir``,
    in ``dtype`` on ``device`` (checked by :func:`base.precision.resolve_device` first).

    ``converted_dir``: where CPU conversions keep their converted copies, mapped back lazily
    (:mod:`pipeline_stages.mapped_weights`); ``None`` converts in memory."""
    config = load_config(model_dir)
    index = index_checkpoint(model_dir)
    family = check_architecture(config, index)
    converted_dir = Path(converted_dir) if converted_dir is not None else None
    n_layers = config.num_hidden_layers
    if not 0 <= start < end <= n_layers:
        raise CheckpointError(
            f"layer range [{start}, {end}) is outside the model's {n_layers} layers"
        )
    with torch.device("meta"):
        stage = family.build_stage(config, start, end)
    needed = family.expected_shapes(
        config, range(start, end), first=stage.is_first, last=stage.is_last
    )
    sources = dict.fromkeys(needed)
    if stage.is_last and LM_HEAD not in index.shapes:
        if not config.tie_word_embeddings:
            raise CheckpointError(f"{model_dir}: lm_head.weight missing and embeddings not tied")
        sources[LM_HEAD] = EMBED  # tied: the LM head reads the embedding matrix
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name in needed:
        src = sources[name] or name
        by_file.setdefault(index.files[src], []).append((name, src))
    for path, pairs in by_file.items():
        for name, src in pairs:
            state[name] = _read(path, src, name, needed[name], dtype, device, converted_dir)
    if EMBED in state and not stage.is_last:  # looked up by token, not read whole
        advise_row_reads(state[EMBED])
    if converted_dir is not None and converted_dir.is_dir():
        prune_stale_copies(converted_dir)
    _return_freed_memory()
    missing, unexpected = stage.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise CheckpointError(f"unexpected tensors for stage: {unexpected[:5]}")
    on_meta = [n for n, p in stage.named_parameters() if p.is_meta]
    if missing or on_meta:
        raise CheckpointError(
            f"stage [{start}, {end}) left tensors unloaded: {(missing or on_meta)[:5]}"
        )
    if stage.is_first and stage.is_last and LM_HEAD not in index.shapes:
        stage.lm_head.weight = stage.model.embed_tokens.weight  # tied: share, don't copy
    # buffers (rotary inv_freq) were created on meta: rebuild them (float32) on the device
    stage.rotary_emb = type(stage.rotary_emb)(config=stage.config).to(device)
    stage.eval()
    n_params = sum(p.numel() for p in stage.parameters())
    log.info(
        "loaded layers [%d, %d) of %s (%s): %.1fM parameters",
        start,
        end,
        model_dir,
        family.display_name,
        n_params / 1e6,
    )
    return stage
