"""RAG retrieval benchmark: index throughput and query latency at N generated documents.

Generates a synthetic rig (``N`` beads in ``.beads/issues.jsonl``, seeded, with roles and
timestamps), indexes it through the real indexer into a fresh store, re-indexes it unchanged,
then times queries:

- ``retrieve``: the whole retrieval of one turn (query embedding + nearest neighbours in every
  collection + re-ranking + dedup), without and with the rig/role filter;
- ``vector search``: the same without the query embedding (pre-embedded queries).

Usage (``python bench/rag.py`` works too); prints JSON, then the Markdown lines of
BENCHMARKS.md::

    nice -n 10 .venv/bin/python -m bench.rag --docs 10000 --queries 200

``--swarm-ttft`` runs the other half instead: the added time-to-first-token of a RAG-assembled
prompt vs the plain prompt through the swarm. It indexes the shipped sample rig
(``samples/gastown-rig``, a copy) into a fresh store, starts the default 3-stage local swarm of
SmolLM2-135M (``--preset``), and for each of several agent turns (different roles and prompts)
runs, interleaved and ``--repeats`` times, the first turn of an agent session on the
conversation engine ``node0-inference`` runs on (``ConversationEngine.connect``: chat template
of the catalog entry, the model's context window; a fresh conversation per turn, greedy):

- plain: ``--rag off``, the turn as the user message;
- rag: ``--rag STORE --rig gastown --role ROLE``, the user message from the engine's
  ``augment`` (``rag.assemble_prompt``) with the config's default budget.

TTFT is ``generate``'s own (first step sent -> first token back), i.e. what ``node0-inference
--json`` reports as ``time_to_first_token_s``; retrieval + block assembly happen before it and
are timed separately, as is the tokenization of the prompt. Each measured turn gets a fresh
session (no KV reuse); opening it is not part of the turn (the client opens its session
before reading stdin). Next to each pair, the same two prompts go through single-process
transformers on one torch thread (``--no-reference`` skips it), which tells prefill compute from
swarm overhead. The last line is JSON::

    nice -n 10 .venv/bin/python -m bench.rag --swarm-ttft --repeats 5
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


SAMPLE_RIG = Path(__file__).resolve().parent.parent / "samples" / "gastown-rig"

# Agent turns of a Gas Town rig, as (role, first prompt of the session).
AGENT_TURNS = [
    ("polecat", "Your hook has gt-q2vk. Add the --json flag to gt polecat list and submit it."),
    ("polecat", "router_test.go in the mail package fails intermittently. How do I fix it?"),
    ("witness", "Polecat slit has been idle for 40 minutes on a go vet warning. What now?"),
    ("deacon", "Run the patrol: which stale wisps should be pruned, and what is overdue?"),
    ("mayor", "Which open beads are ready to sling to a polecat next, and which are blocked?"),
    ("boot", "The deacon has not answered for three minutes. What is the procedure?"),
    ("crew", "The refinery keeps looping on a rebase conflict with main. How do I merge?"),
    ("crew", "Where do transcripts go when a bead is closed, and are secrets scrubbed first?"),
]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_pct(values, 50), 1),
        "p95": round(_pct(values, 95), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def _index_sample_rig(config, workdir: Path) -> tuple[Path, str, dict]:
    """Index a copy of the sample rig the way ``node0 rag index`` does; store dir, rig, facts."""
    import shutil

    from rag.indexer import index_rig
    from rag.sources import read_rig_name
    from rag.store import RagStore

    rig_dir = shutil.copytree(SAMPLE_RIG, workdir / "gastown-rig")
    rig = read_rig_name(rig_dir) or rig_dir.name
    store_dir = workdir / "rag-store"
    with RagStore.open(config, writable=True, path=store_dir) as store:
        t0 = time.perf_counter()
        report = index_rig(
            store,
            rig_dir,
            rig=rig,
            chunk_words=config.chunk_words,
            session_summary_chars=config.session_summary_chars,
            add_batch_size=config.add_batch_size,
        )
        seconds = time.perf_counter() - t0
    facts = {"docs": report.docs_written, "index_seconds": round(seconds, 1)}
    return store_dir, rig, facts


async def _first_token(engine, content: str, *, new_tokens: int) -> tuple[float, float, list[int]]:
    """(session open s, TTFT s, prompt ids) of a first turn in a fresh conversation, as
    ``node0-inference`` runs it (its context already assembled into ``content``)."""
    from inference.conversation import GenerationSettings

    conversation = engine.conversation()
    t0 = time.perf_counter()
    await conversation.open()
    opened = time.perf_counter() - t0
    try:
        result = await conversation.respond(
            [{"role": "user", "content": content}], GenerationSettings(max_new_tokens=new_tokens)
        )
    finally:
        await conversation.close()
    assert result.reused_tokens == 0
    return opened, result.time_to_first_token, result.prompt_ids


class _SingleProcess:
    """Reference: the same prompt's TTFT in single-process transformers on one torch thread
    (the compute one stage daemon gets), measured next to the swarm's so the load hits both."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def ttft(self, ids: list[int]) -> float:
        torch = self.torch
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                self.model.generate(
                    torch.tensor([ids]), max_new_tokens=1, do_sample=False, pad_token_id=0
                )
                return time.perf_counter() - t0
        finally:
            torch.set_num_threads(previous)


def run_swarm_ttft(
    preset_name: str,
    repeats: int,
    new_tokens: int,
    step_timeout: float,
    workdir: Path,
    reference: bool = True,
) -> dict:
    """Swarm TTFT of RAG-assembled vs plain first turns; see the module docstring."""
    import asyncio

    from base.config_loader import load_yaml_config
    from inference.conversation import ConversationEngine
    from inference.rag_context import ContextScope, RagContext
    from inference.swarm_client import SwarmClient
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from rag.config import load_rag_config
    from rag.retrieval import RetrievalSettings, retrieve
    from rag.store import RagStore

    config = load_rag_config()
    settings = RetrievalSettings.from_config(config)
    store_dir, rig, index_facts = _index_sample_rig(config, workdir)
    preset, _ = load_yaml_config(resolve_preset_path(preset_name), SwarmPreset)
    loads = [os.getloadavg()[0]]

    state_file = workdir / "swarm.json"
    t0 = time.perf_counter()
    state = start_swarm(preset, preset_name, runs_dir=workdir / "runs", state_file=state_file)
    client = None
    try:
        swarm_start_s = time.perf_counter() - t0
        client = SwarmClient(preset.model, state.initial_peers)
        single = _SingleProcess(client.model_dir) if reference else None

        with RagStore.open(config, path=store_dir) as store:
            # the catalog's prompt format, the model's context window: node0-inference's engine
            engine = ConversationEngine.connect(
                client, step_timeout=step_timeout, rag=RagContext(store, config)
            )
            mode = engine.prompt_format

            def encode(content: str) -> list[int]:
                return engine.encode([{"role": "user", "content": content}])

            def measure(content: str, ids: list[int]) -> tuple[float, float]:
                opened, ttft, sent = asyncio.run(
                    _first_token(engine, content, new_tokens=new_tokens)
                )
                assert sent == ids
                return opened, ttft

            def assemble(role: str, prompt: str):
                return engine.augment(prompt, ContextScope(rig=rig, role=role))

            # warm-up: embedding model, tokenizer, every stage's first short and long prefill
            role, prompt = AGENT_TURNS[0]
            retrieve(store, prompt, rig=rig, role=role, settings=settings)
            for content in (prompt, assemble(role, prompt).text):
                measure(content, encode(content))
                if single:
                    single.ttft(encode(content))

            rows = []
            for rep in range(repeats):
                for i, (role, prompt) in enumerate(AGENT_TURNS):
                    t0 = time.perf_counter()
                    retrieve(store, prompt, rig=rig, role=role, settings=settings)
                    retrieve_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    assembled = assemble(role, prompt)
                    assemble_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    plain_ids = encode(prompt)
                    plain_encode_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    rag_ids = encode(assembled.text)
                    rag_encode_s = time.perf_counter() - t0
                    # alternate which variant goes first, so drift in the load hits both alike
                    if (rep + i) % 2 == 0:
                        plain_open, plain_ttft = measure(prompt, plain_ids)
                        rag_open, rag_ttft = measure(assembled.text, rag_ids)
                    else:
                        rag_open, rag_ttft = measure(assembled.text, rag_ids)
                        plain_open, plain_ttft = measure(prompt, plain_ids)
                    loads.append(os.getloadavg()[0])
                    block = assembled.context
                    row = {
                        "turn": i,
                        "role": role,
                        "plain_tokens": len(plain_ids),
                        "rag_tokens": len(rag_ids),
                        "block_tokens": block.tokens if block else 0,
                        "block_docs": len(block.documents) if block else 0,
                        "retrieve_ms": retrieve_s * 1000,
                        "assemble_ms": assemble_s * 1000,
                        "plain_encode_ms": plain_encode_s * 1000,
                        "rag_encode_ms": rag_encode_s * 1000,
                        "open_ms": (plain_open + rag_open) / 2 * 1000,
                        "plain_ttft_ms": plain_ttft * 1000,
                        "rag_ttft_ms": rag_ttft * 1000,
                    }
                    if single:
                        row["single_plain_ttft_ms"] = single.ttft(plain_ids) * 1000
                        row["single_rag_ttft_ms"] = single.ttft(rag_ids) * 1000
                    rows.append(row)
                    print(
                        f"[{rep + 1}/{repeats}] {role:8s} tokens {row['plain_tokens']:4d} -> "
                        f"{row['rag_tokens']:4d} ({row['block_docs']} docs)  ttft plain "
                        f"{row['plain_ttft_ms']:7.1f} ms, rag {row['rag_ttft_ms']:7.1f} ms "
                        f"(single process {row.get('single_rag_ttft_ms', 0):7.1f} ms); "
                        f"assemble {row['assemble_ms']:5.1f} ms; load {loads[-1]:.2f}",
                        flush=True,
                    )
    finally:
        if client is not None:
            client.close()
        stop_swarm(state_file)

    def col(key: str) -> list[float]:
        return [r[key] for r in rows]

    added = [r["rag_ttft_ms"] - r["plain_ttft_ms"] for r in rows]
    reference_result = None
    if reference:
        reference_result = {
            "plain_ttft_ms": _summary(col("single_plain_ttft_ms")),
            "rag_ttft_ms": _summary(col("single_rag_ttft_ms")),
            "added_ttft_ms": _summary(
                [r["single_rag_ttft_ms"] - r["single_plain_ttft_ms"] for r in rows]
            ),
        }
    # what the user waits for after pressing enter: retrieval + assembly + tokenization + TTFT
    added_turn = [
        r["assemble_ms"]
        + r["rag_encode_ms"]
        + r["rag_ttft_ms"]
        - r["plain_encode_ms"]
        - r["plain_ttft_ms"]
        for r in rows
    ]
    per_turn = [
        {
            k: rows[i][k]
            for k in ("role", "plain_tokens", "rag_tokens", "block_tokens", "block_docs")
        }
        for i in range(len(AGENT_TURNS))
    ]
    return {
        "preset": preset_name,
        "model": preset.model,
        "stages": len(preset.peers),
        "stage_threads": preset.daemon.get("torch_threads", "default"),
        "prompt_format": mode,
        "rig": rig,
        "store_docs": index_facts["docs"],
        "index_seconds": index_facts["index_seconds"],
        "swarm_start_seconds": round(swarm_start_s, 1),
        "turns": len(AGENT_TURNS),
        "repeats": repeats,
        "measurements_per_variant": len(rows),
        "new_tokens": new_tokens,
        "budget_tokens": config.budget_tokens,
        "k": settings.k,
        "plain_prompt_tokens": _summary(col("plain_tokens")),
        "rag_prompt_tokens": _summary(col("rag_tokens")),
        "block_tokens": _summary(col("block_tokens")),
        "plain_ttft_ms": _summary(col("plain_ttft_ms")),
        "rag_ttft_ms": _summary(col("rag_ttft_ms")),
        "added_ttft_ms": _summary(added),
        "added_turn_latency_ms": _summary(added_turn),
        "retrieve_ms": _summary(col("retrieve_ms")),
        "assemble_ms": _summary(col("assemble_ms")),
        "rag_encode_ms": _summary(col("rag_encode_ms")),
        "session_open_ms": _summary(col("open_ms")),
        "per_turn": per_turn,
        "single_process_reference": reference_result,
        "cpus": os.cpu_count(),
        "load_avg_1min": {
            "min": round(min(loads), 2),
            "max": round(max(loads), 2),
            "mean": round(statistics.fmean(loads), 2),
        },
        "python": platform.python_version(),
    }


def markdown_ttft(result: dict) -> str:
    r = result

    def span(key: str, unit: str = " ms") -> str:
        v = r[key]
        return f"p50 {v['p50']}{unit}, p95 {v['p95']}{unit}"

    lines = [
        f"- store: sample rig `{r['rig']}`, {r['store_docs']} documents; {r['turns']} agent "
        f"turns x {r['repeats']} repeats = {r['measurements_per_variant']} per variant; "
        f"{r['stages']}-stage `{r['preset']}` ({r['stage_threads']} torch thread/stage); "
        f"load avg (1 min) {r['load_avg_1min']['min']}–{r['load_avg_1min']['max']}",
        f"- prompt tokens: plain {span('plain_prompt_tokens', '')}; RAG "
        f"{span('rag_prompt_tokens', '')} (block {span('block_tokens', '')}, budget "
        f"{r['budget_tokens']})",
        f"- swarm TTFT plain: {span('plain_ttft_ms')}",
        f"- swarm TTFT RAG: {span('rag_ttft_ms')}",
        f"- added TTFT (paired): {span('added_ttft_ms')}",
        f"- retrieval: {span('retrieve_ms')}; assemble_prompt (retrieval + fit): "
        f"{span('assemble_ms')}; tokenizing the RAG prompt: {span('rag_encode_ms')}",
        f"- added time to first token of the turn (assembly + tokenization + TTFT): "
        f"{span('added_turn_latency_ms')}",
    ]
    ref = r["single_process_reference"]
    if ref:
        lines.append(
            f"- reference, single-process transformers, 1 thread, same turns interleaved: TTFT "
            f"plain p50 {ref['plain_ttft_ms']['p50']} ms, RAG p50 {ref['rag_ttft_ms']['p50']} ms "
            f"(p95 {ref['rag_ttft_ms']['p95']} ms), added p50 {ref['added_ttft_ms']['p50']} ms"
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
    ttft = parser.add_argument_group(
        "swarm TTFT", "--swarm-ttft: RAG-assembled vs plain prompt through the local swarm"
    )
    ttft.add_argument(
        "--swarm-ttft",
        action="store_true",
        help="measure the added swarm time-to-first-token of RAG prompts over the sample rig "
        "instead of the retrieval benchmark (default: off)",
    )
    ttft.add_argument("--preset", default="smollm2-3stage", help="swarm preset (%(default)s)")
    ttft.add_argument(
        "--repeats", type=int, default=5, help="passes over the agent turns (%(default)s)"
    )
    ttft.add_argument(
        "--new-tokens",
        type=int,
        default=1,
        help="tokens generated per turn; TTFT does not depend on it (%(default)s)",
    )
    ttft.add_argument(
        "--step-timeout",
        type=float,
        default=30.0,
        help="seconds a stage may take per step, as node0-inference (%(default)s)",
    )
    ttft.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the single-process transformers TTFT of each prompt (default: measure it)",
    )
    args = parser.parse_args()
    if args.swarm_ttft:
        with tempfile.TemporaryDirectory(prefix="node0-bench-rag-ttft-") as tmp:
            workdir = Path(tmp)
            if args.workdir is not None:
                args.workdir.mkdir(parents=True, exist_ok=False)
                workdir = args.workdir
            result = run_swarm_ttft(
                args.preset,
                args.repeats,
                args.new_tokens,
                args.step_timeout,
                workdir,
                reference=not args.no_reference,
            )
        print(markdown_ttft(result))
        print(json.dumps(result))
        return
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
