"""DPO training throughput vs SFT on the same swarm and the same rows.

Starts the default 3-stage swarm (``smollm2-3stage``), opens two LoRA jobs on it as ``node0
train`` does (adapters ``bench-sft`` and ``bench-dpo``, the same LoRA settings), and for each
batch of preference pairs of the DPO train config runs, interleaved so that background load
hits all alike:

- ``sft``: one :func:`training.pipeline_step.pipeline_train_step` on the batch's ``2n`` rows
  (chosen and rejected, their completion tokens labelled: the same tokens through the same
  stages);
- ``dpo first epoch``: the reference forward of the pairs (adapters off) and one
  :func:`training.dpo_step.pipeline_dpo_step` — what a step costs while the reference cache
  fills;
- ``dpo cached``: the DPO step alone (later epochs: the reference comes from the cache).

tokens/s = non-pad tokens of the timed steps' rows / their wall time. Last line of output:
JSON with the figures and the ratios DPO / SFT.

    python -m bench.dpo [--steps 3] [--warmup 1] [--config configs/train/smollm2-gastown-dpo.yaml]
        [--swarm-file STATE]   # a running local swarm instead of a fresh one
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")


def _load() -> float:
    return os.getloadavg()[0]


def open_job(records, cfg, job_id: str, adapter: str) -> list:
    from training.route import open_route

    clients, _ = open_route(
        records,
        cfg.model,
        job_id=job_id,
        trainer_id=f"bench-{adapter}",
        shard_index=0,
        timeout=cfg.step_timeout,
        open_job=lambda c: c.open_job(
            trainable=f"adapter:{adapter}",
            optimizer=cfg.optimizer,
            model=cfg.model,
            lora=cfg.lora,
            replicas=1,
            checkpoint_every=0,
        ),
    )
    return clients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/train/smollm2-gastown-dpo.yaml")
    parser.add_argument("--preset", default="smollm2-3stage", help="swarm preset")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each kind first")
    parser.add_argument(
        "--swarm-file",
        type=Path,
        default=None,
        help="use this running local swarm (its state file) instead of starting one",
    )
    args = parser.parse_args()

    from base.config_loader import load_yaml_config
    from dataload import build_loaders
    from inference.swarm_client import SwarmClient
    from models.catalog import CATALOG, resolve_model_dir
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from training.config import TrainConfig
    from training.dpo_step import (
        DPOObjective,
        pair_microbatches,
        pipeline_dpo_step,
        pipeline_sequence_logprobs,
    )
    from training.pipeline_step import MicroBatch, pipeline_train_step

    cfg, _ = load_yaml_config(args.config, TrainConfig)
    if cfg.model in CATALOG:
        from models.assets import prepare_model

        prepare_model(cfg.model)
    model_dir = resolve_model_dir(cfg.model)
    train = build_loaders(cfg.data, model_dir=model_dir).train
    per_epoch = train.num_batches(0)
    batches = [
        train.batch_at(train.position(i // per_epoch, i % per_epoch))
        for i in range(args.warmup + args.steps)
    ]
    objective = DPOObjective(cfg.dpo.beta, cfg.dpo.label_smoothing)
    load_start = _load()
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    if args.swarm_file is not None:
        from base.swarm_view import initial_peers_from

        print(f"using the swarm of {args.swarm_file}; load average {load_start:.2f}", flush=True)
        client = SwarmClient(cfg.model, initial_peers_from(args.swarm_file))
    else:
        preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
        preset = preset.model_copy(
            update={"daemon": {**preset.daemon, "state_dir": str(work / "peer-state")}}
        )
        print(f"starting swarm {args.preset}; load average {load_start:.2f}", flush=True)
        state = start_swarm(
            preset, args.preset, runs_dir=work / "runs", state_file=work / "swarm.json"
        )
        client = SwarmClient(preset.model, state.initial_peers)
    seconds = {"sft": [], "dpo_first_epoch": [], "dpo_cached": []}
    tokens: list[int] = []
    try:
        client.wait_for_route()
        records = client.records()
        sft = open_job(records, cfg, f"bench-sft-{os.getpid()}", "bench-sft")
        dpo = open_job(records, cfg, f"bench-dpo-{os.getpid()}", "bench-dpo")
        rows_per_micro = 2 * (cfg.micro_batch_size or cfg.data.batch_size)
        for i, batch in enumerate(batches):
            timed = i >= args.warmup
            rows = batch.batch
            sft_mbs = [
                MicroBatch(
                    rows.input_ids[j : j + rows_per_micro],
                    rows.attention_mask[j : j + rows_per_micro],
                    rows.labels[j : j + rows_per_micro],
                )
                for j in range(0, rows.input_ids.shape[0], rows_per_micro)
            ]
            started = time.perf_counter()
            pipeline_train_step(sft, sft_mbs, i, schedule=cfg.schedule)
            sft_s = time.perf_counter() - started

            mbs = pair_microbatches(batch, cfg.micro_batch_size)
            started = time.perf_counter()
            refs = pipeline_sequence_logprobs(dpo, [mb.rows for mb in mbs], reference=True)
            ref_s = time.perf_counter() - started
            for mb, logps in zip(mbs, refs, strict=True):
                mb.ref_chosen, mb.ref_rejected = logps[: mb.pairs], logps[mb.pairs :]
            started = time.perf_counter()
            result = pipeline_dpo_step(dpo, mbs, i, objective, schedule=cfg.schedule)
            dpo_s = time.perf_counter() - started
            n = int(rows.attention_mask.sum())
            print(
                f"step {i} {'timed' if timed else 'warm-up'}: {n} tokens, sft {sft_s:.2f}s, "
                f"dpo reference {ref_s:.2f}s + step {dpo_s:.2f}s, loss {result.loss:.4f}, "
                f"margins {result.metrics['rewards/margins']:+.4f}; load {_load():.2f}",
                flush=True,
            )
            if timed:
                tokens.append(n)
                seconds["sft"].append(sft_s)
                seconds["dpo_first_epoch"].append(ref_s + dpo_s)
                seconds["dpo_cached"].append(dpo_s)
        for c in sft + dpo:
            c.close()
    finally:
        client.close()
        if args.swarm_file is None:
            stop_swarm(work / "swarm.json")
    rate = {k: sum(tokens) / sum(v) for k, v in seconds.items()}
    result = {
        "model": cfg.model,
        "pairs_per_batch": cfg.data.batch_size,
        "micro_batch_pairs": cfg.micro_batch_size,
        "schedule": cfg.schedule,
        "steps": args.steps,
        "tokens": sum(tokens),
        "sft_tok_s": round(rate["sft"], 2),
        "dpo_cached_tok_s": round(rate["dpo_cached"], 2),
        "dpo_first_epoch_tok_s": round(rate["dpo_first_epoch"], 2),
        "ratio_dpo_cached_vs_sft": round(rate["dpo_cached"] / rate["sft"], 3),
        "ratio_dpo_first_epoch_vs_sft": round(rate["dpo_first_epoch"] / rate["sft"], 3),
        "load_avg_start": round(load_start, 2),
        "load_avg_end": round(_load(), 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
