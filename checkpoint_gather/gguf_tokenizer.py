"""The ``tokenizer.*`` fields embedded in an exported GGUF.

Two origins, one result (``{key: {"type", "sub_type", "value"}}``):

* a catalog model: every ``tokenizer.*`` field of its source GGUF, copied verbatim (llama.cpp then
  produces the same token ids as with the source). Reading the source's 49k-token vocabulary takes
  gguf-py ~10 s, so the fields are read once and cached as JSON next to the prepared model
  (``$NODE0_HOME/models/<name>/gguf_tokenizer.json``), keyed by the source file's sha256;
* any other model: built from its Hugging Face byte-level BPE tokenizer (gpt2-style: tokens in
  id order, token types, merges, special token ids, chat template). ``tokenizer.ggml.pre`` names
  how the text is split before the merges (:func:`pre_tokenizer_name`): ``gpt2`` for ByteLevel's
  own regex, ``qwen2`` for Qwen2's; llama.cpp and transformers' GGUF reader both split by it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType, TokenType

from base.errors import CheckpointError
from provenance import atomic_write, sha256_file

log = logging.getLogger(__name__)

CACHE_FILE = "gguf_tokenizer.json"
Fields = dict[str, dict[str, Any]]


def read_gguf_fields(path: str | Path, prefix: str = "tokenizer.") -> Fields:
    """Every metadata field of ``path`` whose key starts with ``prefix``, with its GGUF types."""
    reader = GGUFReader(str(path))
    fields: Fields = {}
    for key, field in reader.fields.items():
        if not key.startswith(prefix):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        value = field.contents()
        fields[key] = {"type": main.name, "sub_type": sub.name if sub else None, "value": value}
    return fields


def source_tokenizer_fields(model: str) -> Fields:
    """The catalog model's source-GGUF tokenizer fields, from the cache (filled on first use)."""
    from models.catalog import get_spec, prepared_dir, source_gguf_path

    source = source_gguf_path(get_spec(model))
    digest = sha256_file(source)
    cache = prepared_dir(model).parent / CACHE_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("source", {}).get("sha256") == digest:
            return cached["fields"]
        log.info("%s was cached from a different %s; reading it again", cache, source.name)
    log.info("reading tokenizer fields from %s (once; cached in %s)", source.name, cache)
    fields = read_gguf_fields(source)
    if "tokenizer.ggml.model" not in fields or "tokenizer.ggml.tokens" not in fields:
        raise CheckpointError(f"{source} embeds no tokenizer (tokenizer.ggml.*)")
    atomic_write(
        cache, json.dumps({"source": {"path": str(source), "sha256": digest}, "fields": fields})
    )
    return fields


def _merges(tokenizer_json: dict[str, Any]) -> list[str]:
    merges = tokenizer_json["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _is_byte_level(tokenizer_json: dict[str, Any]) -> bool:
    text = json.dumps([tokenizer_json.get("pre_tokenizer"), tokenizer_json.get("decoder")])
    return '"ByteLevel"' in text


def _split_regexes() -> dict[str, str]:
    """``tokenizer.ggml.pre`` name -> the split regex a ``tokenizer.json`` holds for it."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2

    return {"qwen2": QWEN2}


def _walk(pre_tokenizer: dict[str, Any] | None):
    if not pre_tokenizer:
        return
    yield pre_tokenizer
    for child in pre_tokenizer.get("pretokenizers") or ():
        yield from _walk(child)


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """The ``tokenizer.ggml.pre`` of a byte-level BPE ``tokenizer.json``.

    Raises:
        CheckpointError: it splits text by a regex llama.cpp would not know by this file.
    """
    steps = list(_walk(tokenizer_json.get("pre_tokenizer")))
    splits = [s["pattern"].get("Regex") for s in steps if s.get("type") == "Split"]
    if not splits:
        if any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
            return "gpt2"
    elif len(splits) == 1:
        for name, regex in _split_regexes().items():
            if splits[0] == regex:
                return name
    raise CheckpointError(
        "the tokenizer splits text in a way the GGUF export cannot name "
        f"({[s.get('type') for s in steps]}, split {splits[:1]}); llama.cpp would tokenize "
        "differently",
        hint="export Hugging Face only (--gguf none), or convert the HF export with llama.cpp",
    )


def hf_tokenizer_fields(tokenizer_dir: str | Path, *, vocab_size: int) -> Fields:
    """gpt2-style GGUF tokenizer fields built from a Hugging Face byte-level BPE tokenizer.

    Ids without a token (the model's vocabulary may be padded) become ``[PAD<id>]`` UNUSED
    tokens, as llama.cpp's converter writes them.
    """
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{tokenizer_dir} has no tokenizer.json to embed in the GGUF")
    data = json.loads(path.read_text())
    if data.get("model", {}).get("type") != "BPE" or not _is_byte_level(data):
        raise CheckpointError(
            f"{path}: only byte-level BPE (gpt2-style) tokenizers can be "
            "embedded without a source GGUF"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise CheckpointError(f"tokenizer has {len(vocab)} tokens; the model only {vocab_size}")
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(int(TokenType.UNUSED))
        elif index in added:
            tokens.append(by_id[index])
            types.append(int(TokenType.CONTROL if added[index].special else TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[index])
            types.append(int(TokenType.NORMAL))
    fields: Fields = {
        "tokenizer.ggml.model": {"type": "STRING", "sub_type": None, "value": "gpt2"},
        "tokenizer.ggml.pre": {
            "type": "STRING",
            "sub_type": None,
            "value": pre_tokenizer_name(data),
        },
        "tokenizer.ggml.tokens": {"type": "ARRAY", "sub_type": "STRING", "value": tokens},
        "tokenizer.ggml.token_type": {"type": "ARRAY", "sub_type": "INT32", "value": types},
        "tokenizer.ggml.merges": {"type": "ARRAY", "sub_type": "STRING", "value": _merges(data)},
        "tokenizer.ggml.add_bos_token": {
            "type": "BOOL",
            "sub_type": None,
            "value": bool(getattr(tokenizer, "add_bos_token", False)),
        },
        "tokenizer.ggml.add_space_prefix": {"type": "BOOL", "sub_type": None, "value": False},
    }
    for key, token_id in (
        ("bos_token_id", tokenizer.bos_token_id),
        ("eos_token_id", tokenizer.eos_token_id),
        ("unknown_token_id", tokenizer.unk_token_id),
        ("padding_token_id", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            fields[f"tokenizer.ggml.{key}"] = {
                "type": "UINT32",
                "sub_type": None,
                "value": int(token_id),
            }
    if getattr(tokenizer, "chat_template", None):
        fields["tokenizer.chat_template"] = {
            "type": "STRING",
            "sub_type": None,
            "value": tokenizer.chat_template,
        }
    return fields


def tokenizer_fields(
    *, model: str | None, tokenizer_dir: str | Path | None, vocab_size: int
) -> Fields:
    """The fields to embed: the catalog model's source GGUF's, else built from ``tokenizer_dir``."""
    if model is not None:
        fields = source_tokenizer_fields(model)
    elif tokenizer_dir is not None:
        fields = hf_tokenizer_fields(tokenizer_dir, vocab_size=vocab_size)
    else:
        raise CheckpointError(
            "a GGUF export needs a tokenizer: a catalog model or a tokenizer directory"
        )
    n_tokens = len(fields["tokenizer.ggml.tokens"]["value"])
    if n_tokens != vocab_size:
        raise CheckpointError(
            f"the tokenizer lists {n_tokens} tokens but the model's vocabulary "
            f"is {vocab_size}; llama.cpp requires them to match"
        )
    return fields


def add_fields(writer, fields: Fields) -> None:
    """Add ``fields`` to a ``GGUFWriter`` with their recorded GGUF types."""
    for key, field in sorted(fields.items()):
        sub = GGUFValueType[field["sub_type"]] if field["sub_type"] else None
        writer.add_key_value(key, field["value"], GGUFValueType[field["type"]], sub_type=sub)
