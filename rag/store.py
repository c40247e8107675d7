"""The RAG store: a ChromaDB PersistentClient directory with one collection per source kind.

Collections (``node0-beads``, ``node0-configs``, ``node0-formulas``, ``node0-sessions``) use
cosine distance and the registered local embedding function. Documents are added with
embeddings computed here (never by ChromaDB's default function, which would download a model),
and queries go by vector.

One process owns a store directory at a time: two writers lost data in our measurements. A
writable store holds an exclusive ``flock`` on ``<store>/node0-rag.lock`` for its lifetime; a
read-only store holds a shared one, so readers run side by side but never next to a writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from base.errors import ConfigError, DataError
from rag.documents import COLLECTIONS, Document
from rag.embedding import MiniLMEmbeddingFunction

if TYPE_CHECKING:
    from rag.config import RagConfig

logger = logging.getLogger(__name__)

COLLECTION_PREFIX = "node0-"
LOCK_NAME = "node0-rag.lock"


@dataclass(frozen=True)
class StoredHit:
    """One nearest neighbour as ChromaDB returned it."""

    id: str
    collection: str
    text: str
    metadata: dict[str, Any]
    similarity: float  # cosine similarity, 1 - cosine distance
    embedding: np.ndarray | None = None


class StoreLockedError(DataError):
    """The store directory is held by another process."""


class _DirLock:
    """A blocking-with-timeout ``flock`` on one file; shared or exclusive."""

    def __init__(self, path: Path, *, exclusive: bool, timeout_s: float) -> None:
        self.path = path
        self.exclusive = exclusive
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip()
                    os.close(self._fd)
                    raise StoreLockedError(
                        f"RAG store {path.parent} is locked by another process"
                        + (f" (last writer: {holder})" if holder else ""),
                        hint="one process writes a store at a time; wait for `node0 rag index` "
                        "or the session using it to finish",
                    ) from None
                time.sleep(0.1)
        if exclusive:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"pid {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class RagStore:
    """An open RAG store directory. Use :meth:`open` and close it (or use ``with``).

    Args:
        path: store directory.
        embedder: the embedding function (also registered on the collections).
        writable: take the exclusive lock and create missing collections.
        lock_timeout_s: how long to wait for the lock before :class:`StoreLockedError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        embedder: MiniLMEmbeddingFunction,
        writable: bool = False,
        lock_timeout_s: float = 30.0,
    ) -> None:
        import chromadb
        from chromadb.config import Settings

        self.path = Path(path)
        self.embedder = embedder
        self.writable = writable
        if writable:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "chroma.sqlite3").is_file():
            raise DataError(
                f"no RAG store at {self.path}",
                hint="build one with `node0 rag index --rig PATH --store PATH`",
            )
        self._lock = _DirLock(self.path / LOCK_NAME, exclusive=writable, timeout_s=lock_timeout_s)
        try:
            self._client = chromadb.PersistentClient(
                path=str(self.path), settings=Settings(anonymized_telemetry=False)
            )
            self._collections = {name: self._open_collection(name) for name in COLLECTIONS}
        except BaseException:
            self._lock.release()
            raise

    @classmethod
    def open(
        cls, config: RagConfig, *, writable: bool = False, path: str | Path | None = None
    ) -> RagStore:
        """Open the store a :class:`~rag.config.RagConfig` describes (``path`` overrides it)."""
        embedder = MiniLMEmbeddingFunction(
            batch_size=config.embed_batch_size, threads=config.embed_threads
        )
        return cls(
            path if path is not None else config.store_path,
            embedder=embedder,
            writable=writable,
            lock_timeout_s=config.lock_timeout_s,
        )

    def _open_collection(self, name: str) -> Any:
        full = COLLECTION_PREFIX + name
        if self.writable:
            return self._client.get_or_create_collection(
                full,
                embedding_function=self.embedder,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"kind": name},
            )
        try:
            return self._client.get_collection(full, embedding_function=self.embedder)
        except Exception as exc:  # chromadb raises NotFoundError / ValueError variants
            raise DataError(
                f"RAG store {self.path} has no collection {full}: {exc}",
                hint="rebuild it with `node0 rag index`",
            ) from exc

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None
        self._lock.release()

    def __enter__(self) -> RagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def _collection(self, name: str) -> Any:
        try:
            return self._collections[name]
        except KeyError:
            raise ConfigError(f"unknown RAG collection {name!r}; known: {COLLECTIONS}") from None

    def count(self, collection: str | None = None) -> int:
        names = [collection] if collection else list(COLLECTIONS)
        return sum(self._collection(name).count() for name in names)

    def metadata_of(self, collection: str, rig: str | None = None) -> dict[str, dict[str, Any]]:
        """Id -> metadata of every document in a collection (of one rig, if given)."""
        got = self._collection(collection).get(
            where={"rig": rig} if rig is not None else None, include=["metadatas"]
        )
        return dict(zip(got["ids"], got["metadatas"], strict=True))

    def get(
        self, collection: str, ids: Sequence[str], *, embeddings: bool = False
    ) -> list[StoredHit]:
        """Stored documents by id (similarity 1.0), in the order ChromaDB returns them."""
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        got = self._collection(collection).get(ids=list(ids), include=include)
        vectors = got.get("embeddings") if embeddings else None
        return [
            StoredHit(
                id=doc_id,
                collection=collection,
                text=got["documents"][i],
                metadata=got["metadatas"][i],
                similarity=1.0,
                embedding=np.asarray(vectors[i]) if vectors is not None else None,
            )
            for i, doc_id in enumerate(got["ids"])
        ]

    def matching(
        self, collection: str, where: dict[str, Any], *, limit: int = 100
    ) -> list[StoredHit]:
        """Documents whose metadata match a filter (with embeddings; similarity left at 0)."""
        got = self._collection(collection).get(
            where=where, limit=limit, include=["documents", "metadatas", "embeddings"]
        )
        return [
            StoredHit(
                id=doc_id,
                collection=collection,
                text=got["documents"][i],
                metadata=got["metadatas"][i],
                similarity=0.0,
                embedding=np.asarray(got["embeddings"][i]),
            )
            for i, doc_id in enumerate(got["ids"])
        ]

    def nearest(
        self,
        collection: str,
        query_embedding: np.ndarray,
        n: int,
        *,
        where: dict[str, Any] | None = None,
        with_embeddings: bool = False,
        overfetch: int = 8,
    ) -> list[StoredHit]:
        """The ``n`` nearest documents of one collection that pass ``where``, best first.

        A ChromaDB ``where`` filter costs ~40-130 ms at 10k documents (an unfiltered query
        ~5-10 ms), so a filter is first applied in Python to the ``n * overfetch`` nearest
        unfiltered documents; that gives exactly the ``n`` nearest passing documents whenever at
        least ``n`` of them pass (or the collection is exhausted). Only otherwise — a selective
        filter — does ChromaDB filter. Either way the result is the same.
        """
        col = self._collection(collection)
        size = col.count()
        if size == 0 or n <= 0:
            return []
        vector = np.asarray(query_embedding, dtype=np.float32)
        if where is not None and overfetch > 1 and _evaluable(where):
            wide = self._query(
                col, collection, vector, min(n * overfetch, size), None, with_embeddings
            )
            passing = [hit for hit in wide if _passes(hit.metadata, where)]
            if len(passing) >= n or len(wide) == size:
                return passing[:n]
        return self._query(col, collection, vector, min(n, size), where, with_embeddings)

    @staticmethod
    def _query(
        col: Any,
        collection: str,
        vector: np.ndarray,
        n: int,
        where: dict[str, Any] | None,
        with_embeddings: bool,
    ) -> list[StoredHit]:
        include = ["documents", "metadatas", "distances"]
        if with_embeddings:
            include.append("embeddings")
        res = col.query(query_embeddings=[vector], n_results=n, where=where, include=include)
        vectors = res["embeddings"][0] if with_embeddings else None
        return [
            StoredHit(
                id=doc_id,
                collection=collection,
                text=res["documents"][0][i],
                metadata=res["metadatas"][0][i],
                similarity=1.0 - float(res["distances"][0][i]),
                embedding=np.asarray(vectors[i]) if vectors is not None else None,
            )
            for i, doc_id in enumerate(res["ids"][0])
        ]

    # -- writing ---------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise DataError(f"RAG store {self.path} was opened read-only")

    def add(self, documents: Sequence[Document], *, batch_size: int = 1000) -> None:
        """Embed and add documents (ids must be new in their collection)."""
        self._require_writable()
        by_collection: dict[str, list[Document]] = {}
        for doc in documents:
            by_collection.setdefault(doc.collection, []).append(doc)
        for name, docs in by_collection.items():
            col = self._collection(name)
            for start in range(0, len(docs), batch_size):
                batch = docs[start : start + batch_size]
                vectors = self.embedder.embed([d.text for d in batch])
                col.add(
                    ids=[d.id for d in batch],
                    documents=[d.text for d in batch],
                    metadatas=[d.metadata() for d in batch],
                    embeddings=vectors,
                )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self._require_writable()
        if ids:
            self._collection(collection).delete(ids=list(ids))


def _evaluable(where: dict[str, Any]) -> bool:
    """Whether :func:`_passes` understands a filter (equality, ``$eq``, ``$in``, ``$and``)."""
    if set(where) == {"$and"}:
        return all(isinstance(w, dict) and _evaluable(w) for w in where["$and"])
    if len(where) != 1:
        return False
    ((key, cond),) = where.items()
    if key.startswith("$"):
        return False
    if isinstance(cond, dict):
        return set(cond) <= {"$eq", "$in"} and len(cond) == 1
    return isinstance(cond, str | int | float | bool)


def _passes(meta: dict[str, Any], where: dict[str, Any]) -> bool:
    """ChromaDB's semantics of an :func:`_evaluable` filter on one document's metadata."""
    if "$and" in where:
        return all(_passes(meta, w) for w in where["$and"])
    ((key, cond),) = where.items()
    value = meta.get(key)
    if isinstance(cond, dict):
        if "$in" in cond:
            return value in cond["$in"]
        return value == cond["$eq"]
    return value == cond
