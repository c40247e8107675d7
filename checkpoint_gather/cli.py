"""``node0 inspect`` and ``node0 stamp`` (checkpoint metadata); ``node0 gather`` joins later."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect", help="architecture, shapes, tokenizer, provenance and quality of a checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inspect.add_argument("path", type=Path, help="Hugging Face checkpoint directory or .gguf file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument("--min-score", type=int, default=None,
                         help="exit with the quality-gate code (9) below this score")
    inspect.set_defaults(handler=run_inspect)

    stamp = subparsers.add_parser(
        "stamp", help="write a copy of a checkpoint with patched metadata (never in place)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    stamp.add_argument("path", type=Path, help="Hugging Face checkpoint directory (the input)")
    stamp.add_argument("--architecture", default=None,
                       help="value for config.json architectures, e.g. LlamaForCausalLM")
    stamp.add_argument("--model-type", default=None, help="value for config.json model_type, "
                       "e.g. llama")
    stamp.add_argument("--tokenizer", type=Path, default=None,
                       help="directory whose tokenizer files replace the checkpoint's")
    stamp.add_argument("-o", "--out", type=Path, required=True,
                       help="output directory (must not exist)")
    stamp.add_argument("--allow-mismatch", action="store_true",
                       help="write the copy even if its declaration contradicts its tensors")
    stamp.set_defaults(handler=run_stamp)


def run_inspect(args: argparse.Namespace) -> int:
    from checkpoint_gather.inspect import inspect_checkpoint
    from node.errors import QualityGateError

    report = inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True, default=str))
    else:
        print(report.to_text())
    if args.min_score is not None and report.score < args.min_score:
        raise QualityGateError(f"quality score {report.score} is below --min-score "
                               f"{args.min_score}")
    return 0


def run_stamp(args: argparse.Namespace) -> int:
    from checkpoint_gather.stamp import STAMP_RECORD, stamp_checkpoint

    result = stamp_checkpoint(args.path, args.out, architecture=args.architecture,
                              model_type=args.model_type, tokenizer_dir=args.tokenizer,
                              allow_mismatch=args.allow_mismatch)
    for change in result.changes:
        print(f"{change['field']}: {change['before']} -> {change['after']}")
    check = result.architecture_check
    print("architecture check: " + ("ok" if check["ok"] else "FAILED: " + check["message"]))
    print(f"wrote {result.out} (record: {result.out / STAMP_RECORD}); {args.path} unchanged")
    return 0
