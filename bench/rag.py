"""RAG retrieval benchmark: index throughput and query latency at N generated documents.

Generates a synthetic rig (``N`` beads in ``.beads/issues.jsonl``, seeded, with roles and
timestamps), indexes it through the real indexer into a fresh store, re-indexes it unchanged,
then times queries:

- ``retrieve``: the whole retrieval of one turn (query embedding + nearest neighbours in every
  collection + re-ranking + dedup), without and with the rig/role filter;
- ``vector search``: the same without the query embedding (pre-embedded queries).

Usage::

    nice -n 10 .venv/bin/python -m bench.rag --docs 10000 --queries 200

(``python bench/rag.py`` works too.)

Results are printed as JSON and as the Markdown lines recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Run as a script, this file's directory would come first on sys.path and shadow the `rag`
# package with this very module.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

ROLES = ["polecat", "witness", "deacon", "mayor", "crew", "boot", "refinery", ""]
WORDS = (
    "bead polecat witness deacon mayor refinery convoy sling hook molecule formula mail inbox "
    "merge queue rebase branch test flaky retry backoff timeout crash nil pointer panic log "
    "rotate compact sync export transcript scrub secret token dashboard status priority epic "
    "plan registry deploy rollback adapter inference corpus dataset eval gate patrol nudge "
    "escalate stale wisp heartbeat restart health check order dependency blocker ready close"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def generate_rig(root: Path, n_docs: int, seed: int = 0) -> None:
    """A rig of ``n_docs`` beads with varied titles, descriptions, roles and times."""
    rng = random.Random(seed)
    (root / ".beads").mkdir(parents=True)
    with open(root / ".beads" / "issues.jsonl", "w") as out:
        for i in range(n_docs):
            role = rng.choice(ROLES)
            bead = {
                "id": f"bx-{i:05d}",
                "title": _sentence(rng, rng.randint(4, 10)).capitalize(),
                "description": _sentence(rng, rng.randint(15, 45)),
                "status": rng.choice(["open", "in_progress", "blocked", "closed"]),
                "priority": rng.randint(0, 4),
                "issue_type": rng.choice(["bug", "feature", "task", "chore"]),
                "assignee": f"bench/{role}s/agent" if role else None,
                "updated_at": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z",
            }
            out.write(json.dumps(bead) + "\n")


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _latencies(fn, items) -> dict[str, float]:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(_pct(times, 50), 2),
        "p95_ms": round(_pct(times, 95), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def run(n_docs: int, n_queries: int, workdir: Path) -> dict:
    from rag.config import load_rag_config
    from rag.indexer import index_rig
    from rag.retrieval import RetrievalSettings, retrieve, retrieve_by_vector
    from rag.store import RagStore

    config = load_rag_config()
    rig = workdir / "bench-rig"
    generate_rig(rig, n_docs)
    store_dir = workdir / "store"

    with RagStore.open(config, writable=True, path=store_dir) as store:
        store.embedder.embed_one("warm-up")  # model load is not indexing throughput
        t0 = time.perf_counter()
        first = index_rig(store, rig, rig="bench", add_batch_size=config.add_batch_size)
        index_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = index_rig(store, rig, rig="bench", add_batch_size=config.add_batch_size)
        reindex_s = time.perf_counter() - t0
        assert first.docs_written == n_docs and not again.wrote_anything

    rng = random.Random(1)
    queries = [_sentence(rng, rng.randint(5, 14)) for _ in range(n_queries)]
    roles = [rng.choice(ROLES[:-1]) for _ in range(n_queries)]
    settings = RetrievalSettings.from_config(config)
    with RagStore.open(config, path=store_dir) as store:
        retrieve(store, "warm-up", settings=settings)
        vectors = store.embedder.embed(queries)
        plain = _latencies(
            lambda i: retrieve(store, queries[i], settings=settings), range(n_queries)
        )
        filtered = _latencies(
            lambda i: retrieve(store, queries[i], rig="bench", role=roles[i], settings=settings),
            range(n_queries),
        )
        search = _latencies(
            lambda i: retrieve_by_vector(store, vectors[i], settings=settings), range(n_queries)
        )
        search_filtered = _latencies(
            lambda i: retrieve_by_vector(
                store, vectors[i], rig="bench", role=roles[i], settings=settings
            ),
            range(n_queries),
        )
    return {
        "docs": n_docs,
        "queries": n_queries,
        "index_seconds": round(index_s, 1),
        "index_docs_per_s": round(n_docs / index_s, 1),
        "embed_seconds": round(first.embed_seconds, 1),
        "reindex_unchanged_seconds": round(reindex_s, 2),
        "retrieve": plain,
        "retrieve_rig_role_filter": filtered,
        "vector_search": search,
        "vector_search_rig_role_filter": search_filtered,
        "embed_threads": config.embed_threads,
        "k": settings.k,
        "candidates_per_collection": settings.candidates_per_collection,
        "cpus": os.cpu_count(),
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def markdown(result: dict) -> str:
    r = result
    lines = [
        f"- index {r['docs']} docs (generated beads, 15–55 words): "
        f"{r['index_docs_per_s']} docs/s ({r['index_seconds']} s, of which embedding "
        f"{r['embed_seconds']} s; {r['embed_threads']} torch thread)",
        f"- re-index unchanged: {r['reindex_unchanged_seconds']} s",
    ]
    for key, label in (
        ("retrieve", "retrieve (embed + search + rerank), no filter"),
        ("retrieve_rig_role_filter", "retrieve, rig + role filter"),
        ("vector_search", "vector search + rerank only, no filter"),
        ("vector_search_rig_role_filter", "vector search + rerank, rig + role filter"),
    ):
        lat = r[key]
        lines.append(
            f"- {label}: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms "
            f"({r['queries']} queries, k={r['k']}, "
            f"{r['candidates_per_collection']} candidates/collection)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--docs", type=int, default=10_000, help="generated documents (%(default)s)"
    )
    parser.add_argument("--queries", type=int, default=200, help="timed queries (%(default)s)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the rig and store are written (default: a temp dir, removed)",
    )
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        result = run(args.docs, args.queries, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="node0-bench-rag-") as tmp:
            result = run(args.docs, args.queries, Path(tmp))
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
