"""Write a GGUF file (f32, f16, bf16 or q8_0) that llama.cpp and transformers' GGUF loader read.

The steps follow gguf-py's own writer states (header -> key/values -> tensor infos -> data), with
everything verified before the file is opened:

1. tensors checked against the config (same check as the Hugging Face export); with tied
   embeddings no ``output.weight`` is written (readers then use ``token_embd``);
2. names and layouts mapped through the family's GGUF layout (:mod:`models.gguf_layout`; the
   family comes from the config: LLaMA's Q/K rows are permuted like llama.cpp's converter,
   Qwen2's are not), shapes asserted unchanged;
3. metadata: ``general.*``, the required ``<arch>.*`` keys, ``general.file_type``, every
   ``tokenizer.*`` field (:mod:`checkpoint_gather.gguf_tokenizer`) and ``node0.provenance``;
4. written to a temporary sibling and renamed.

Norm weights and biases (1-D) stay f32 in every type, as llama.cpp's converter does. The 2-D
weights are encoded by gguf-py's own ``gguf.quants.quantize`` from their float32 values (exact
for float32, bfloat16 and float16 tensors alike): a bfloat16 stage's weights written as ``bf16``
keep their bytes. A weight with a finite value beyond what its type holds (65504 for ``f16``,
whose scales ``q8_0`` also stores) is refused, named, rather than written as an infinity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import (
    GGML_QUANT_SIZES,
    GGML_QUANT_VERSION,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
)
from gguf.quants import quantize

from base.atomic import atomic_file, flush_early
from base.errors import CheckpointError
from checkpoint_gather.coverage import check_tensors
from checkpoint_gather.dtypes import check_range
from checkpoint_gather.gguf_tokenizer import Fields, add_fields
from checkpoint_gather.hf_export import export_config
from checkpoint_gather.manifest import file_sha256
from checkpoint_gather.sources import dtype_name
from models import EMBED, LM_HEAD, family_of

log = logging.getLogger(__name__)

PROVENANCE_KEY = "node0.provenance"
# output type -> (GGML type of 2-D weights, general.file_type)
GGUF_TYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
_F16_MAX = float(np.finfo(np.float16).max)
# GGML type -> the largest magnitude it holds (q8_0: 127 x its block's float16 scale)
_LIMITS: dict[GGMLQuantizationType, float] = {
    GGMLQuantizationType.F16: _F16_MAX,
    GGMLQuantizationType.BF16: torch.finfo(torch.bfloat16).max,
    GGMLQuantizationType.Q8_0: 127 * _F16_MAX,
}
_UNQUANTIZED = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def _tensor_order(family, config, tied: bool) -> list[str]:
    """Embedding, each layer's tensors, final norm, then the LM head unless tied."""
    names = family.expected_shapes(config, range(config.num_hidden_layers), first=True, last=True)
    return [name for name in names if not (tied and name == LM_HEAD)]


def _encode(array: np.ndarray, qtype: GGMLQuantizationType, name: str):
    """``(data, raw_dtype)`` for ``GGUFWriter.add_tensor``: a float32 ``array`` as ``qtype``
    (1-D: float32), refused if ``qtype`` cannot hold it."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or qtype == GGMLQuantizationType.F32:
        return array, None
    block, _ = GGML_QUANT_SIZES[qtype]
    if array.shape[-1] % block:
        raise CheckpointError(
            f"{name}: rows of {array.shape[-1]} values cannot be stored as "
            f"{qtype.name} (blocks of {block})",
            hint="export f16 or bf16 instead",
        )
    check_range(
        name,
        torch.from_numpy(array),
        f"GGUF {qtype.name}",
        _LIMITS[qtype],
        hint="export f32 or bf16 instead",
    )
    return quantize(array, qtype), qtype


def export_gguf(
    out: str | Path,
    config,
    state: Mapping[str, torch.Tensor],
    *,
    tokenizer: Fields,
    out_type: str = "f32",
    name: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    digest: bool = False,
    durable: bool = True,
) -> Path:
    """Write ``state`` (HF names; float32, bfloat16 or float16) as a llama.cpp GGUF file of the
    config's family.

    Args:
        out: the output file; must not exist.
        config: the model's config (``PretrainedConfig`` or dict).
        state: every tensor of the model (a tied ``lm_head.weight`` equal to the embedding is
            accepted and not written).
        tokenizer: ``tokenizer.*`` fields, from :func:`checkpoint_gather.gguf_tokenizer.
            tokenizer_fields`.
        out_type: ``f32``, ``f16``, ``bf16`` or ``q8_0``.
        name: ``general.name``.
        provenance: stored as JSON under ``node0.provenance``.
        digest: hash the written file while its writeback to the disk runs (the digest is
            remembered, :func:`checkpoint_gather.manifest.file_sha256`, for the manifest).
        durable: fsync the file before it is published (:mod:`base.atomic`).

    Raises:
        CheckpointError: an unknown type, tensors that do not make the config's model, or a
            weight ``out_type`` cannot hold (named; nothing is written).
    """
    if out_type not in GGUF_TYPES:
        raise CheckpointError(f"unknown GGUF type {out_type!r}; choose one of {list(GGUF_TYPES)}")
    qtype, file_type = GGUF_TYPES[out_type]
    family = family_of(config)
    config = export_config(config)
    specs = {n: (tuple(t.shape), dtype_name(t.dtype)) for n, t in state.items()}
    dropped = check_tensors(config, specs)
    if LM_HEAD in dropped and not torch.equal(state[LM_HEAD], state[EMBED]):
        raise CheckpointError(
            "embeddings are tied, but lm_head.weight differs from the token "
            "embedding; refusing to drop it"
        )
    try:
        metadata = family.gguf.metadata_fields(config)
    except ValueError as exc:
        raise CheckpointError(f"this config cannot be written as a llama.cpp GGUF: {exc}") from exc
    n_tokens = len(tokenizer["tokenizer.ggml.tokens"]["value"])
    if n_tokens != config.vocab_size:
        raise CheckpointError(
            f"tokenizer lists {n_tokens} tokens, the model has {config.vocab_size}"
        )
    tied = bool(config.tie_word_embeddings)
    out = Path(out)
    with atomic_file(out, durable=durable) as tmp:
        writer = GGUFWriter(str(tmp), family.gguf.arch)
        writer.add_type("model")
        if name:
            writer.add_name(name)
        for key, (value, vtype) in metadata.items():
            writer.add_key_value(key, value, vtype)
        writer.add_file_type(int(file_type))
        if qtype not in _UNQUANTIZED:
            writer.add_quantization_version(GGML_QUANT_VERSION)
        add_fields(writer, tokenizer)
        writer.add_string(PROVENANCE_KEY, json.dumps(dict(provenance or {}), sort_keys=True))
        for hf_name in _tensor_order(family, config, tied):
            array = state[hf_name].detach().to(torch.float32).contiguous().numpy()
            gguf_name, array = family.gguf.to_gguf_layout(hf_name, array, config)
            data, raw_dtype = _encode(array, qtype, hf_name)
            writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if durable:
            flush_early(tmp)  # its writeback runs while it is hashed
        if digest:
            file_sha256(tmp)  # same inode and mtime after the rename: the digest stays valid
    log.info(
        "wrote GGUF %s (%s %s, %d layers, tied=%s)",
        out,
        family.gguf.arch,
        out_type,
        config.num_hidden_layers,
        tied,
    )
    return out
