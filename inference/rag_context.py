"""Retrieved context for conversation turns: an open RAG store, its config, and a scope.

The engine asks :meth:`RagContext.assemble` for the prompt of a user turn; this is the one call
into :func:`rag.assemble_prompt` for every front end, so a turn gets the same context block
whether it comes from ``node0-inference``, ``node0 demo`` or an HTTP request. Retrieval embeds
the query with torch; calls are serialised, since the embedder sets torch's thread count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import RequestError


@dataclass(frozen=True)
class ContextScope:
    """Which retrieved context the turns of one conversation get.

    Attributes:
        rig: only documents of this rig (None: every rig in the store).
        role: only documents of this Gas Town role or of every role (None: no role filter).
        budget_tokens: the context block's size limit in tokens, markers included (None: the
            RAG config's ``budget_tokens``).
    """

    rig: str | None = None
    role: str | None = None
    budget_tokens: int | None = None


class RagContext:
    """An open RAG store and the config its retrieval and block assembly follow.

    Args:
        store: an open :class:`rag.RagStore` (read-only is enough).
        config: the :class:`rag.RagConfig` with the retrieval knobs and the default budget.
    """

    def __init__(self, store: Any, config: Any) -> None:
        from rag import RetrievalSettings

        self.store = store
        self.config = config
        self.settings = RetrievalSettings.from_config(config)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, config: Any = None) -> RagContext:
        """Open the store at ``path`` (built by ``node0 rag index``) with ``config``.

        Raises:
            RequestError: no store directory at ``path``.
        """
        from rag import RagStore, load_rag_config

        if not Path(path).is_dir():
            raise RequestError(
                f"RAG store {path} does not exist",
                hint="build it with `node0 rag index --rig RIG --store PATH`",
            )
        config = config if config is not None else load_rag_config()
        return cls(RagStore.open(config, path=Path(path)), config)

    def assemble(self, prompt: str, scope: ContextScope, count_tokens: Callable[[str], int]):
        """The :class:`rag.AssembledPrompt` of one user turn: context block + ``prompt``.

        The block is retrieved for ``prompt`` alone and measured with ``count_tokens`` (the
        serving model's tokenizer), so it never exceeds the scope's budget.
        """
        from rag import assemble_prompt

        with self._lock:
            return assemble_prompt(
                prompt,
                store=self.store,
                rig=scope.rig,
                role=scope.role,
                count_tokens=count_tokens,
                query=prompt,
                budget_tokens=scope.budget_tokens
                if scope.budget_tokens is not None
                else self.config.budget_tokens,
                settings=self.settings,
                min_entry_tokens=self.config.min_entry_tokens,
            )

    def close(self) -> None:
        self.store.close()
