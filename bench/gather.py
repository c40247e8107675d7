"""Gather benchmark: ``node0 gather`` of SmolLM2-135M from a 3-stage local swarm vs writing the
same model from one process, in the same run.

- gather: :func:`checkpoint_gather.gather.gather` — DHT lookup, three ``PullWeights`` streams in
  parallel (the stages snapshot, hash — once per daemon while the weights are unchanged — and
  send their layers; a tied LM head is declared by its digest only), digest checks on arrival,
  coverage, then the Hugging Face directory (safetensors) + GGUF written concurrently and
  atomically (not fsynced: the default, see docs/gather.md), hashed once, with manifest and run
  record;
- single: the model already loaded in one process (``AutoModelForCausalLM.from_pretrained`` of
  the prepared HF dir, timed separately) → ``save_pretrained`` + the same GGUF writer
  (:func:`checkpoint_gather.gguf_export.export_gguf`).

Each measured job runs in a fresh child process that reports its own wall time (imports
excluded) and peak RSS; jobs alternate single/gather ``--repeats`` times so background load hits
both alike; medians are reported, and per run the ratio and the 1-minute load average before it
(the first gather of a fresh swarm also pays the stages' first hashing of their weights). The
stage daemons' peak RSS (VmHWM) is read before and after. The last line is JSON with the ratio
gather/single::

    nice -n 10 .venv/bin/python -m bench.gather [--repeats 2] [--gguf f32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_gather(out: Path, peers: list[str], gguf: tuple[str, ...], chunk_bytes: int) -> dict:
    from checkpoint_gather.gather import GatherOptions, gather
    from provenance import create_run_dir

    run = create_run_dir(out.parent / "runs", "gather")
    started = time.perf_counter()
    result = gather(
        GatherOptions(model=MODEL, out_dir=out, gguf_types=gguf, chunk_bytes=chunk_bytes),
        initial_peers=peers,
        run=run,
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "phases": result.seconds,
        "bytes": result.bytes,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_single(out: Path, gguf: tuple[str, ...]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from checkpoint_gather.gguf_export import export_gguf
    from checkpoint_gather.gguf_tokenizer import tokenizer_fields
    from models.assets import prepare_model

    model_dir = prepare_model(MODEL)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    load = time.perf_counter() - started
    started = time.perf_counter()
    model.save_pretrained(out / "hf")
    fields = tokenizer_fields(
        model=MODEL, tokenizer_dir=model_dir, vocab_size=model.config.vocab_size
    )
    state = model.state_dict()
    for out_type in gguf:
        export_gguf(
            out / f"{MODEL}-{out_type}.gguf",
            model.config,
            state,
            tokenizer=fields,
            out_type=out_type,
            name=MODEL,
        )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "load_seconds": load, "peak_rss_mb": _peak_rss_mb()}


def _child(args: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gather", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench child {args[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-3stage")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gguf", default="f32", help="GGUF types, comma-separated")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (about 2 GB of outputs per repeat)",
    )
    parser.add_argument("--worker", choices=("gather", "single"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peers", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    gguf = tuple(t for t in args.gguf.split(",") if t)
    if args.worker == "gather":
        print(json.dumps(worker_gather(args.out, args.peers, gguf, args.chunk_bytes)))
        return
    if args.worker == "single":
        print(json.dumps(worker_single(args.out, gguf)))
        return

    from base.config_loader import load_yaml_config
    from checkpoint_gather.gguf_tokenizer import source_tokenizer_fields
    from models.assets import prepare_model
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    prepare_model(MODEL)
    source_tokenizer_fields(MODEL)  # fill the GGUF tokenizer cache outside the timings
    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    work = Path(tempfile.mkdtemp(prefix="node0-bench-gather-"))
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    gathers, singles = [], []
    try:
        hwm_before = [_vm_hwm_mb(p.pid) for p in state.peers]
        for i in range(args.repeats):
            load = os.getloadavg()[0]
            singles.append(
                _child(
                    ["--worker", "single", "--out", str(work / f"single-{i}"), "--gguf", args.gguf]
                )
            )
            gathers.append(
                _child(
                    [
                        "--worker",
                        "gather",
                        "--out",
                        str(work / f"gather-{i}"),
                        "--gguf",
                        args.gguf,
                        "--chunk-bytes",
                        str(args.chunk_bytes),
                        "--peers",
                        *state.initial_peers,
                    ]
                )
            )
            gathers[-1]["load_avg"] = load
            gathers[-1]["ratio"] = gathers[-1]["seconds"] / singles[-1]["seconds"]
            print(
                f"run {i} (load avg {load:.1f}): ratio {gathers[-1]['ratio']:.2f}, "
                f"single {singles[-1]['seconds']:.1f} s "
                f"(+ from_pretrained {singles[-1]['load_seconds']:.1f} s), "
                f"{singles[-1]['peak_rss_mb']:.0f} MB | gather {gathers[-1]['seconds']:.1f} s "
                "(" + ", ".join(f"{k} {v:.1f} s" for k, v in gathers[-1]["phases"].items()) + "), "
                f"{gathers[-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        hwm_after = [_vm_hwm_mb(p.pid) for p in state.peers]
    finally:
        stop_swarm(state_file)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def median(rows, key):
        return round(statistics.median(r[key] for r in rows), 2)

    result = {
        "model": MODEL,
        "stages": len(preset.peers),
        "gguf": list(gguf),
        "repeats": args.repeats,
        "bytes_pulled": gathers[0]["bytes"],
        "gather_s": median(gathers, "seconds"),
        **{
            f"gather_{k}_s": round(statistics.median(g["phases"][k] for g in gathers), 2)
            for k in gathers[0]["phases"]
        },
        "single_s": median(singles, "seconds"),
        "single_load_s": median(singles, "load_seconds"),
        "gather_peak_rss_mb": median(gathers, "peak_rss_mb"),
        "single_peak_rss_mb": median(singles, "peak_rss_mb"),
        "stage_peak_rss_mb_before": hwm_before,
        "stage_peak_rss_mb_after": hwm_after,
        "runs": [
            {
                "load_avg": round(g["load_avg"], 2),
                "single_s": round(s["seconds"], 2),
                "gather_s": round(g["seconds"], 2),
                "ratio": round(g["ratio"], 2),
                **{f"{k}_s": round(v, 2) for k, v in g["phases"].items()},
            }
            for s, g in zip(singles, gathers, strict=True)
        ],
    }
    result["ratio_time"] = round(result["gather_s"] / result["single_s"], 2)
    result["ratio_peak_rss"] = round(result["gather_peak_rss_mb"] / result["single_peak_rss_mb"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
