"""``node0 gather`` (export the swarm's model); ``node0 inspect``, ``node0 stamp`` (metadata)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")  # checkpoint_gather.gguf_export.GGUF_TYPES
DTYPES = ("float32", "bfloat16", "float16")  # base.precision.DTYPES


def _gguf_types(value: str) -> tuple[str, ...]:
    if value.strip().lower() == "none":
        return ()
    types = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in types if t not in GGUF_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(
            f"GGUF types are {', '.join(GGUF_TYPES)} (comma-separated) or none; got {value!r}"
        )
    return types


def _names(value: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _register_gather(subparsers: argparse._SubParsersAction) -> None:
    gather = subparsers.add_parser(
        "gather",
        help="pull every stage of a model from the swarm and export it verified "
        "(Hugging Face, GGUF, PEFT adapter)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gather.add_argument(
        "--model",
        default="smollm2-135m",
        help="model served by the swarm (catalog name or the daemons' HF dir)",
    )
    gather.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (must not exist; written atomically)",
    )
    mode = gather.add_mutually_exclusive_group()
    mode.add_argument(
        "--merge-adapters",
        type=_names,
        default="",
        metavar="A[,B…]",
        help="fold these adapters into the exported weights (W + alpha/r * B A "
        "per adapter, stacked in this order, as PEFT merge_and_unload): the "
        "export equals the swarm serving a session with these adapters",
    )
    mode.add_argument(
        "--adapters-only",
        action="store_true",
        help="export only a PEFT adapter directory (adapter/), no base weights",
    )
    gather.add_argument(
        "--adapter",
        default=None,
        help="with --adapters-only: the adapter to export; none given: the "
        "only one the stages hold",
    )
    gather.add_argument(
        "--gguf",
        type=_gguf_types,
        default="f32",
        metavar="TYPES",
        help="GGUF files to write: comma-separated of f32, f16, bf16, q8_0, or none",
    )
    gather.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="dtype of the Hugging Face weights; auto: the dtype the stages hold when they "
        "all hold one (a bf16 swarm's exact bytes), else float32. A value the dtype cannot "
        "hold is refused, never written as an infinity",
    )
    gather.add_argument(
        "--no-hf", dest="hf", action="store_false", help="skip the Hugging Face directory"
    )
    gather.add_argument(
        "--initial-peers",
        nargs="*",
        default=None,
        help="DHT multiaddrs; none given: the local swarm's state file",
    )
    gather.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="where the run directory with the run record goes",
    )
    gather.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer directory to ship; none given: the model's local dir",
    )
    gather.add_argument("--chunk-bytes", type=int, default=1 << 20, help="bytes per streamed chunk")
    gather.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds without data after which a peer counts as failed",
    )
    gather.add_argument(
        "--durable",
        action="store_true",
        help="fsync the output before publishing it, so it survives a power "
        "loss too (slower: waits for the disk)",
    )
    gather.add_argument(
        "--route-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for stage announcements to cover every layer",
    )
    gather.add_argument(
        "--credential",
        type=Path,
        default=None,
        help="this client's swarm credential (`node0 swarm invite NAME --role gatherer`); "
        "default $NODE0_CREDENTIAL, else the local swarm's local-<role>.json",
    )
    gather.set_defaults(handler=run_gather)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_gather(subparsers)
    inspect = subparsers.add_parser(
        "inspect",
        help="architecture, shapes, tokenizer, provenance and quality of a checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    inspect.add_argument("path", type=Path, help="Hugging Face checkpoint directory or .gguf file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.add_argument(
        "--min-score",
        type=int,
        default=None,
        help="exit with the quality-gate code (9) below this score",
    )
    inspect.set_defaults(handler=run_inspect)

    stamp = subparsers.add_parser(
        "stamp",
        help="write a copy of a checkpoint with patched metadata (never in place)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    stamp.add_argument("path", type=Path, help="Hugging Face checkpoint directory (the input)")
    stamp.add_argument(
        "--architecture",
        default=None,
        help="value for config.json architectures, e.g. LlamaForCausalLM",
    )
    stamp.add_argument(
        "--model-type", default=None, help="value for config.json model_type, e.g. llama"
    )
    stamp.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="directory whose tokenizer files replace the checkpoint's",
    )
    stamp.add_argument(
        "-o", "--out", type=Path, required=True, help="output directory (must not exist)"
    )
    stamp.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="write the copy even if its declaration contradicts its tensors",
    )
    stamp.set_defaults(handler=run_stamp)


def run_inspect(args: argparse.Namespace) -> int:
    from base.errors import QualityGateError
    from checkpoint_gather.inspect import inspect_checkpoint

    report = inspect_checkpoint(args.path)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True, default=str))
    else:
        print(report.to_text())
    if args.min_score is not None and report.score < args.min_score:
        raise QualityGateError(
            f"quality score {report.score} is below --min-score {args.min_score}"
        )
    return 0


def run_stamp(args: argparse.Namespace) -> int:
    from checkpoint_gather.stamp import STAMP_RECORD, stamp_checkpoint

    result = stamp_checkpoint(
        args.path,
        args.out,
        architecture=args.architecture,
        model_type=args.model_type,
        tokenizer_dir=args.tokenizer,
        allow_mismatch=args.allow_mismatch,
    )
    for change in result.changes:
        print(f"{change['field']}: {change['before']} -> {change['after']}")
    check = result.architecture_check
    print("architecture check: " + ("ok" if check["ok"] else "FAILED: " + check["message"]))
    print(f"wrote {result.out} (record: {result.out / STAMP_RECORD}); {args.path} unchanged")
    return 0


def _progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def run_gather(args: argparse.Namespace) -> int:
    import time

    from security.active import use_credential

    if args.credential:
        use_credential(args.credential)

    from base.banner import print_banner
    from base.swarm_view import initial_peers_from
    from checkpoint_gather.gather import GatherOptions, gather
    from provenance import create_run_dir

    options = GatherOptions(
        model=args.model,
        out_dir=args.out,
        merge_adapters=args.merge_adapters,
        adapters_only=args.adapters_only,
        adapter=args.adapter,
        hf=args.hf,
        dtype=None if args.dtype == "auto" else args.dtype,
        gguf_types=args.gguf,
        tokenizer_dir=args.tokenizer,
        chunk_bytes=args.chunk_bytes,
        idle_timeout=args.idle_timeout,
        route_timeout=args.route_timeout,
        durable=args.durable,
    )
    peers = args.initial_peers or initial_peers_from()
    hf_output = [f"Hugging Face ({args.dtype})"] if args.hf else []
    outputs = (
        ["PEFT adapter " + (args.adapter or "(the one held)")]
        if args.adapters_only
        else hf_output + [f"GGUF {t}" for t in args.gguf]
    )
    print_banner(
        "gather",
        None,
        None,
        [
            f"model: {args.model}",
            f"out: {args.out}",
            "outputs: " + ", ".join(outputs),
            "merge adapters: " + (", ".join(args.merge_adapters) or "none"),
            f"dht: join {', '.join(peers)}",
        ],
    )
    run = create_run_dir(
        args.runs_dir,
        "gather",
        config={
            "model": args.model,
            "out": str(args.out),
            "merge_adapters": list(args.merge_adapters),
            "adapters_only": args.adapters_only,
            "adapter": args.adapter,
            "hf": args.hf,
            "dtype": args.dtype,
            "gguf": list(args.gguf),
            "chunk_bytes": args.chunk_bytes,
            "durable": args.durable,
            "initial_peers": peers,
        },
    )
    started = time.monotonic()
    result = gather(options, initial_peers=peers, run=run, progress=_progress())
    export = result.export
    print(
        f"gathered {args.model}: {result.bytes / 1e6:.1f} MB from {len(result.stages)} "
        f"stages in {time.monotonic() - started:.1f} s"
        + (f", adapters merged: {', '.join(result.adapters)}" if args.merge_adapters else "")
    )
    if export.hf_dir is not None:
        print(
            f"  Hugging Face: {export.hf_dir} ({export.dtype})\n    load: AutoModelForCausalLM."
            f"from_pretrained({str(export.hf_dir)!r}, dtype=torch.{export.dtype})"
        )
    for out_type, path in export.gguf_files.items():
        print(
            f"  GGUF {out_type}: {path}\n    load: llama.cpp, or AutoModelForCausalLM."
            f"from_pretrained({str(path.parent)!r}, gguf_file={path.name!r})"
        )
    if export.adapter_dir is not None:
        print(
            f"  PEFT adapter {result.adapters[0]}: {export.adapter_dir}\n    load: "
            f"PeftModel.from_pretrained(<base {args.model}>, {str(export.adapter_dir)!r})"
        )
    print(f"  manifest: {export.manifest}\n  run record: {run.path / 'run_record.json'}")
    return 0
