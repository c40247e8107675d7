"""The tokenizer work of an export that needs no tensor, done before the export.

Loading the tokenizer once (the proof that the shipped files work,
:func:`checkpoint_gather.hf_export.check_tokenizer`) and reading the GGUF ``tokenizer.*`` fields
(:func:`checkpoint_gather.gguf_tokenizer.tokenizer_fields`) run in background threads, and the
export picks the results up; failures surface where the export would have raised them.
``node0 gather`` starts them while it waits for the DHT route (the CPU is mostly idle then; run
during the pull instead they measured no better), :func:`checkpoint_gather.gather.gather_stages`
alone at the start of the pull.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from pathlib import Path

from checkpoint_gather.gguf_tokenizer import Fields, source_tokenizer_fields, tokenizer_fields
from checkpoint_gather.hf_export import TokenizerCheck, check_tokenizer


def _local_vocab_size(tokenizer_dir: Path) -> int | None:
    try:
        return int(json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _background(job) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(job())
        except BaseException as exc:  # noqa: BLE001 (handed to whoever asks)
            future.set_exception(exc)

    threading.Thread(target=run, name="tokenizer-prep", daemon=True).start()
    return future


class TokenizerPrep:
    """Start the work in daemon threads at construction; ask for the results later."""

    def __init__(self, *, model: str | None, tokenizer_dir: str | Path, hf: bool, gguf: bool):
        self.model = model
        self.tokenizer_dir = Path(tokenizer_dir)
        # a catalog model's fields do not depend on the vocabulary size; otherwise guess it
        # from the local config and redo the work if the stages' config says otherwise
        self._fields_vocab = None if model else _local_vocab_size(self.tokenizer_dir)
        self._check = _background(lambda: check_tokenizer(self.tokenizer_dir)) if hf else None
        self._fields = (
            _background(self._read_fields) if gguf and (model or self._fields_vocab) else None
        )

    def _read_fields(self) -> Fields:
        if self.model:
            return source_tokenizer_fields(self.model)
        return tokenizer_fields(
            model=None, tokenizer_dir=self.tokenizer_dir, vocab_size=self._fields_vocab
        )

    def hf_check(self) -> TokenizerCheck | None:
        """The tokenizer loaded once, or None (the export then loads its copy itself)."""
        if self._check is None:
            return None
        try:
            return self._check.result()
        except Exception:  # noqa: BLE001 (the export's own load reports it properly)
            return None

    def gguf_fields(self, vocab_size: int) -> Fields:
        """The GGUF tokenizer fields for a model of ``vocab_size`` tokens (the GGUF writer
        checks the count)."""
        if self._fields is not None and (self.model or self._fields_vocab == vocab_size):
            return self._fields.result()
        return tokenizer_fields(
            model=self.model, tokenizer_dir=self.tokenizer_dir, vocab_size=vocab_size
        )
