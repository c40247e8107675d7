"""The tokenizer, loaded from the model's own checkpoint directory (never from a hub).

The training tokenizer must be the one the stages were built from: it is read from the same
Hugging Face directory, offline, and fingerprinted (sha256 of its files) so a run record and a
saved data position can name exactly which tokenization produced the batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from base.errors import CheckpointError
from provenance import sha256_file, sha256_json

#: Files that define a Hugging Face tokenizer; those present are fingerprinted.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class TokenizerInfo:
    """The ids the data loader needs, resolved once, plus a fingerprint of the files."""

    eos_id: int
    """Appended after every assistant turn; also the padding id when there is no pad token."""
    pad_id: int
    """Fills padded positions (their attention mask is 0 and labels are -100)."""
    has_chat_template: bool
    fingerprint: str
    """sha256 over the names and sha256 of the tokenizer files in the checkpoint directory."""


def load_tokenizer(model_dir: str | Path):
    """Load the tokenizer of a Hugging Face checkpoint directory (``local_files_only``).

    Raises:
        CheckpointError: the directory or its tokenizer is missing, or it has no EOS token.
    """
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(
            f"model directory {path} does not exist",
            hint="prepare it with `node0 models prepare NAME`",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {path}: {exc}") from exc
    tokenizer_info(tokenizer, path)  # fail early on a tokenizer the loader cannot use
    return tokenizer


def tokenizer_info(tokenizer, model_dir: str | Path | None = None) -> TokenizerInfo:
    """Resolve EOS / pad ids and fingerprint ``model_dir``'s tokenizer files.

    Without ``model_dir`` (a tokenizer built in memory) the fingerprint hashes the vocabulary.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CheckpointError(
            "the tokenizer has no EOS token; assistant turns cannot be terminated",
            hint="use a checkpoint whose tokenizer sets eos_token",
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if model_dir is not None:
        files = {
            name: sha256_file(Path(model_dir) / name)
            for name in TOKENIZER_FILES
            if (Path(model_dir) / name).is_file()
        }
        if not files:
            raise CheckpointError(f"{model_dir} holds no tokenizer files")
        fingerprint = sha256_json(files)
    else:
        fingerprint = sha256_json(sorted(tokenizer.get_vocab().items()))
    return TokenizerInfo(
        eos_id=int(eos),
        pad_id=int(pad),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        fingerprint=fingerprint,
    )
