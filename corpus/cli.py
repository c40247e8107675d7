"""`node0 corpus …`: build training sets from rigs, scan a file for secrets, audit a build."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from base.errors import DataError

DEFAULT_CONFIG = "configs/corpus/default.yaml"


def _build(args: argparse.Namespace) -> int:
    from corpus.build import build_corpus
    from corpus.config import load_config

    config_path = args.config
    if config_path == DEFAULT_CONFIG and not Path(config_path).is_file():
        config_path = None  # built-in defaults (same values) when run outside the repo
    cfg = load_config(config_path)
    if args.target_rig:
        cfg = cfg.model_copy(update={"target_rig": args.target_rig})
    print(f"node0 corpus build: config {config_path or '<built-in defaults>'}", file=sys.stderr)
    result = build_corpus(
        cfg,
        args.rig or ["."],
        args.out,
        config_path=config_path,
        argv=["node0", "corpus", *sys.argv[2:]],
    )
    m = result.manifest
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "sft": m["counts"]["sft"]["total"],
                "dpo": m["counts"]["dpo"]["total"],
                "quarantined_records": m["counts"]["quarantined_records"],
                "rejected_records": m["counts"]["rejected_records"],
                "reconciliation_ok": m["reconciliation"]["ok"],
            },
            sort_keys=True,
        )
    )
    return 0


def _scan(args: argparse.Namespace) -> int:
    from corpus.scrub import Scrubber

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    scrubber = Scrubber(use_library=not args.no_library)
    findings = scrubber.scan(text)
    for f in findings:
        line = text.count("\n", 0, f.start) + 1
        print(
            f"{path}:{line}: {f.confidence} {f.category}:{f.type} ({f.detector}) {f.describe(text)}"
        )
    if args.scrubbed:
        sys.stdout.write(scrubber.scrub(text).text)
    return 1 if (findings and args.fail_on_findings) else 0


def _audit(args: argparse.Namespace) -> int:
    from corpus.audit import audit_run, format_audit

    record = audit_run(
        args.run_dir,
        args.sample,
        args.seed,
        reviewer=args.reviewer,
        verdict=args.verdict,
        notes=args.notes,
    )
    print(json.dumps(record, sort_keys=True) if args.json else format_audit(record))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    corpus = subparsers.add_parser(
        "corpus", help="build training sets from Gas Town rigs", formatter_class=fmt
    )
    sub = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")

    build = sub.add_parser(
        "build",
        formatter_class=fmt,
        help="collect, scrub, format and partition a corpus into a run dir",
    )
    build.add_argument(
        "--rig",
        action="append",
        metavar="PATH",
        help="rig directory (repeatable); default: the current directory",
    )
    build.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="corpus config YAML (values only; see corpus/config.py)",
    )
    build.add_argument(
        "--out", default="runs/corpus", help="root under which a new run directory is created"
    )
    build.add_argument(
        "--target-rig",
        default=None,
        help="rig whose corpus is built (default: config value, else first --rig)",
    )
    build.set_defaults(handler=_build)

    scan = sub.add_parser(
        "scan", formatter_class=fmt, help="print the scrubber's findings for a file (values masked)"
    )
    scan.add_argument("file", help="file to scan")
    scan.add_argument(
        "--scrubbed",
        action="store_true",
        help="also print the scrubbed text (placeholders instead of secrets)",
    )
    scan.add_argument("--no-library", action="store_true", help="skip the detect-secrets layer")
    scan.add_argument(
        "--fail-on-findings", action="store_true", help="exit 1 when anything is found"
    )
    scan.set_defaults(handler=_scan)

    audit = sub.add_parser(
        "audit",
        formatter_class=fmt,
        help="seeded sample of a build's scrubbed examples: spans near findings and long "
        "high-entropy or credential-shaped tokens left (masked); recorded in the run",
    )
    audit.add_argument("run_dir", help="run directory written by `node0 corpus build`")
    audit.add_argument("--sample", type=int, default=50, help="number of examples to draw")
    audit.add_argument("--seed", type=int, default=0, help="seed of the sample")
    audit.add_argument("--reviewer", default=None, help="who reviewed the sample (recorded)")
    audit.add_argument(
        "--verdict",
        choices=["clean", "leak", "new-format"],
        default=None,
        help="the reviewer's verdict (recorded)",
    )
    audit.add_argument("--notes", default="", help="free-text notes (recorded)")
    audit.add_argument("--json", action="store_true", help="print the audit record as JSON")
    audit.set_defaults(handler=_audit)
