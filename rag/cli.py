"""`node0 rag index` and `node0 rag query`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from base.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rag",
        help="retrieval store of a rig's beads, configs, formulas and sessions",
        description="Build and query the ChromaDB store that supplies retrieved context.",
    )
    sub = parser.add_subparsers(dest="rag_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="RAG config YAML (default: configs/rag/default.yaml)",
        )
        p.add_argument(
            "--store",
            type=Path,
            default=None,
            help="store directory (default: store_path from the config)",
        )

    index = sub.add_parser(
        "index",
        help="index a rig incrementally (unchanged skipped, changed replaced, deleted removed)",
    )
    index.add_argument("--rig", type=Path, required=True, help="rig directory to index (required)")
    index.add_argument(
        "--rig-name",
        default=None,
        help="rig name stored with its documents (default: [rig] name of rig.toml, else "
        "the directory's name)",
    )
    common(index)
    index.add_argument(
        "--runs-root",
        type=Path,
        default=Path("runs"),
        help="where the run directory with the run record is created (default: %(default)s)",
    )
    index.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: a table)"
    )
    index.set_defaults(handler=run_index)

    query = sub.add_parser("query", help="show the best hits for a text, with scores")
    query.add_argument("text", help="query text (the current turn of a session)")
    query.add_argument("--rig", default=None, help="only this rig's documents (default: all)")
    query.add_argument(
        "--role",
        default=None,
        help="only documents of this role or of every role (default: no filter)",
    )
    query.add_argument(
        "--k", type=int, default=None, help="hits to show (default: k of the config)"
    )
    common(query)
    query.add_argument(
        "--context-budget",
        type=int,
        default=None,
        help="also print the context block assembled within this many tokens "
        "(needs --tokenizer; default: hits only)",
    )
    query.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="local Hugging Face tokenizer directory that counts the block's tokens "
        "(default: none)",
    )
    query.add_argument("--json", action="store_true", help="print hits as JSON (default: a list)")
    query.set_defaults(handler=run_query)

    parser.set_defaults(handler=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_index(args: argparse.Namespace) -> int:
    from provenance import create_run_dir, sha256_json
    from rag.config import DEFAULT_CONFIG_PATH, load_rag_config
    from rag.indexer import index_rig
    from rag.sources import read_rig_name
    from rag.store import RagStore

    config = load_rag_config(args.config, store_path=args.store)
    root = args.rig.resolve()
    if not root.is_dir():
        raise DataError(f"rig directory {args.rig} does not exist")
    rig = args.rig_name or read_rig_name(root) or root.name
    config_path = args.config or DEFAULT_CONFIG_PATH
    print(
        f"rag index: config {config_path} (sha256 {sha256_json(config.to_dict())[:12]}); "
        f"rig {rig} at {root}; store {config.store_path}",
        file=sys.stderr,
    )
    run = create_run_dir(
        args.runs_root, "rag-index", config=config.to_dict(), config_path=config_path
    )
    run.add_input(root, role="rig")
    try:
        with RagStore.open(config, writable=True) as store:
            report = index_rig(
                store,
                root,
                rig=rig,
                chunk_words=config.chunk_words,
                session_summary_chars=config.session_summary_chars,
                add_batch_size=config.add_batch_size,
            )
            totals = {
                name: store.count(name) for name in ("beads", "configs", "formulas", "sessions")
            }
    except BaseException:
        run.finish("failed")
        raise
    (run.path / "index_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    run.add_artifact("index_report.json")
    run.finish("done", store=str(config.store_path), store_counts=totals)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.summary_lines():
            print(line)
        for problem in report.problems:
            print(f"skipped: {problem}")
        for note in report.sanitized:
            print(f"scrubbed: {note}")
        print(f"store {config.store_path}: {totals}; run record {run.path}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from rag.config import load_rag_config
    from rag.context import assemble_context
    from rag.retrieval import RetrievalSettings, retrieve
    from rag.store import RagStore

    config = load_rag_config(args.config, store_path=args.store)
    if args.k is not None and args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    k = args.k or config.k
    settings = RetrievalSettings.from_config(
        config, k=k, candidates_per_collection=max(k, config.candidates_per_collection)
    )
    count_tokens = None
    if args.context_budget is not None:
        if args.tokenizer is None:
            raise ConfigError(
                "--context-budget needs --tokenizer DIR (the serving model's "
                "tokenizer counts the block's tokens)"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)

        def count_tokens(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

    with RagStore.open(config) as store:
        hits = retrieve(store, args.text, rig=args.rig, role=args.role, settings=settings)
        block = None
        if count_tokens is not None:
            block = assemble_context(
                args.text,
                store=store,
                rig=args.rig,
                role=args.role,
                budget_tokens=args.context_budget,
                count_tokens=count_tokens,
                settings=settings,
                min_entry_tokens=config.min_entry_tokens,
            )
    if args.json:
        out: dict[str, Any] = {"hits": [h.to_dict() for h in hits]}
        if block is not None:
            out["context"] = {**block.to_dict(), "text": block.text}
        print(json.dumps(out, indent=2))
        return 0
    if not hits:
        print("no hits")
    for rank, hit in enumerate(hits, start=1):
        lines = [ln for ln in hit.text.splitlines() if ln.strip() and not ln.startswith("[")]
        first = lines[0] if lines else ""
        print(
            f"{rank}. {hit.score:.3f} (sim {hit.similarity:.3f}) {hit.id}"
            f"  role={hit.role or '*'} updated={hit.updated_at or '-'}"
        )
        print(f"   {first[:110]}")
    if block is not None:
        print(
            f"\n--- context block: {block.tokens}/{block.budget_tokens} tokens, "
            f"{len(block.documents)} documents ---"
        )
        print(block.text)
    return 0
