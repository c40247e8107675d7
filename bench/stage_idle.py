"""What a pause before each decode step costs a stage's compute: back to back vs after a gap.

A batch-1 swarm runs its stages in turn: while one stage computes, the others wait for their
next step, so every stage process starts every step after a pause of about the other stages'
time. A single process decodes layer after layer with no pause. This bench runs one stage's
decode step (``forward_batch``, one position, the daemon's path) in this process, ``--steps``
times per gap, with each ``--gaps`` milliseconds spent before each step in one of three ways:

- ``sleep``: the thread sleeps (what a waiting daemon does);
- ``spin``: the thread busy-waits in Python (the core never idles, other code runs on it);
- back to back (gap 0): nothing between steps, as in a single process.

Gaps are interleaved round by round so drift hits all alike. Only the step itself is timed
(median). The last line is JSON with ``compute_ms`` per way and gap, and ``sleep_penalty``:
the step after a sleep of the largest gap ÷ back to back.

    python -m bench.stage_idle [--model smollm2-135m] [--span 10,20] [--gaps 2,20,50]
        [--steps 40] [--rounds 3] [--threads 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed_steps(stage, gap_s: float, wait, steps: int) -> float:
    """Median ms of one-position decode steps on a 32-position cache, ``wait(gap_s)`` before
    each (no step is committed, so every step sees the same 32 cached positions)."""
    from models.ragged_batch import RaggedBatch, Segment
    from node.span_bench import dummy_inputs

    kv = stage.new_session_kv(64)
    prompt, token = dummy_inputs(stage, 32), dummy_inputs(stage, 1)
    times = []
    with torch.inference_mode():
        batch = RaggedBatch([Segment(kv, 32)])
        stage.forward_batch(prompt, batch)
        batch.commit()
        for _ in range(steps):
            if gap_s:
                wait(gap_s)
            batch = RaggedBatch([Segment(kv, 1)])
            started = time.perf_counter()
            stage.forward_batch(token, batch)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m", help="catalog name or HF directory")
    parser.add_argument("--span", default="10,20", help="the stage's layers, start,end")
    parser.add_argument("--gaps", default="2,20,50", help="milliseconds before each step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    args = parser.parse_args()

    from base.precision import torch_dtype
    from models.assets import prepare_model
    from models.catalog import CATALOG, resolve_model_dir
    from pipeline_stages.loader import load_stage

    torch.set_num_threads(args.threads)
    start, end = (int(v) for v in args.span.split(","))
    model_dir = (prepare_model if args.model in CATALOG else resolve_model_dir)(args.model)
    stage = load_stage(model_dir, start, end, dtype=torch_dtype(args.dtype))
    gaps = [float(g) for g in args.gaps.split(",")]
    ways = {"sleep": time.sleep, "spin": busy_wait}
    results: dict[str, list[float]] = {"back_to_back": []}
    results |= {f"{way}_{g:g}ms": [] for way in ways for g in gaps}
    load = os.getloadavg()
    timed_steps(stage, 0.0, time.sleep, 5)  # warm-up
    for r in range(args.rounds):
        results["back_to_back"].append(timed_steps(stage, 0.0, time.sleep, args.steps))
        for g in gaps:
            for way, wait in ways.items():
                ms = timed_steps(stage, g / 1000, wait, args.steps)
                results[f"{way}_{g:g}ms"].append(ms)
        print(
            f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in results.items()),
            flush=True,
        )
    compute = {k: round(statistics.median(v), 3) for k, v in results.items()}
    largest = f"sleep_{max(gaps):g}ms"
    print(
        json.dumps(
            {
                "model": args.model,
                "span": [start, end],
                "threads": args.threads,
                "dtype": args.dtype,
                "load_average": [round(x, 2) for x in load],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "compute_ms": compute,
                "sleep_penalty": round(compute[largest] / compute["back_to_back"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
