"""Training and inference on the same daemons (issue 11): each alone, then both at once.

The default 3-stage swarm serves ``--sessions`` concurrent chat sessions of ``--new-tokens``
greedy tokens (the conversation engine, as in :mod:`bench.concurrency`) and runs LoRA training
steps of the shipped train config (its micro-batches and schedule, as ``node0 train`` drives
them, :func:`training.pipeline_step.pipeline_train_step`) on the same daemons. Three phases, in
one run: inference alone, training alone (``--steps`` steps), and both at once (training steps
back to back in a thread for as long as the inference batch runs). Each daemon's compute gate
runs inference batches first and training pieces (one decoder block or LM-head chunk of a
micro-batch) in between, within ``training_share`` of the compute time while sessions wait, so
inference pays a bounded price and training still progresses.

The last line is JSON: the inference figures alone and with training (tokens/s, ITL p50/p95),
their ratios, and the training step time alone and while serving.

    python -m bench.shared_compute [--sessions 4] [--new-tokens 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.concurrency import QUESTIONS, _timed_client_class, swarm_batch
from bench.training import open_bench_job


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=4, help="concurrent inference sessions")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--steps", type=int, default=3, help="training steps measured alone")
    parser.add_argument("--config", default="configs/train/smollm2-gastown.yaml")
    parser.add_argument("--preset", default="smollm2-3stage")
    parser.add_argument(
        "--daemon",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a daemon setting of the preset (YAML value), e.g. training_share=0.1",
    )
    args = parser.parse_args()
    import yaml

    overrides = {}
    for item in args.daemon:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--daemon {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    load_average = [round(x, 2) for x in os.getloadavg()]

    from base.config_loader import load_yaml_config
    from dataload import build_loaders
    from inference.conversation import ConversationEngine
    from models.assets import prepare_model
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from training.config import TrainConfig
    from training.pipeline_step import pipeline_train_step
    from training.trainer import microbatches

    cfg, _ = load_yaml_config(args.config, TrainConfig)
    model_dir = prepare_model(cfg.model)
    train = build_loaders(cfg.data, model_dir=model_dir).train
    per_epoch = train.num_batches(0)

    def batch(i: int):
        return train.batch_at(train.position((i // per_epoch) % 1000, i % per_epoch))

    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    work = Path(tempfile.mkdtemp(prefix="node0-bench-"))
    daemon = {
        **preset.daemon,
        **overrides,
        "state_dir": str(work / "peer-state"),
        "max_sessions": max(16, args.sessions + 2),
    }
    preset = preset.model_copy(update={"daemon": daemon})
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = _timed_client_class()(preset.model, state.initial_peers)
    try:
        client.wait_for_route()
        stages = open_bench_job(client.records(), cfg, f"bench-shared-{os.getpid()}")
        steps_done = [0]

        def train_step() -> float:
            i = steps_done[0]
            mbs = microbatches(batch(i), cfg.micro_batch_size)
            started = time.perf_counter()
            result = pipeline_train_step(stages, mbs, i, schedule=cfg.schedule)
            assert result.applied, result.reports
            steps_done[0] += 1
            return time.perf_counter() - started

        engine = ConversationEngine.connect(client, max_length=args.new_tokens + 256)
        convs = [
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            for i in range(args.sessions)
        ]
        swarm_batch(engine, convs[:2], 8)  # warm-up both
        train_step()

        alone = swarm_batch(engine, convs, args.new_tokens)
        print(f"inference alone: {alone}", flush=True)
        step_alone = [train_step() for _ in range(args.steps)]
        print(f"training alone: steps {[round(s, 2) for s in step_alone]} s", flush=True)

        stop = threading.Event()
        step_shared: list[float] = []

        def keep_training() -> None:
            while not stop.is_set():
                step_shared.append(train_step())

        trainer = threading.Thread(target=keep_training, name="bench-trainer")
        trainer.start()
        time.sleep(0.5)  # the first training step is under way
        shared = swarm_batch(engine, convs, args.new_tokens)
        stop.set()
        trainer.join()
        print(f"inference with training: {shared}", flush=True)
        print(f"training while serving: steps {[round(s, 2) for s in step_shared]} s", flush=True)
    finally:
        client.close()
        stop_swarm(state_file)

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    result = {
        "sessions": args.sessions,
        "new_tokens": args.new_tokens,
        "micro_batch_size": cfg.micro_batch_size,
        "schedule": cfg.schedule,
        "daemon_overrides": overrides,
        "load_average": load_average,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "inference_alone": alone,
        "inference_with_training": shared,
        "tokens_per_s_ratio": ratio(shared["tokens_per_s"], alone["tokens_per_s"]),
        "itl_p95_ratio": ratio(shared["itl_p95_ms"], alone["itl_p95_ms"]),
        "train_step_s_alone": round(statistics.median(step_alone), 3),
        "train_steps_while_serving": len(step_shared),
        "train_step_s_while_serving": round(statistics.median(step_shared), 3)
        if step_shared
        else None,
    }
    result["train_step_ratio"] = ratio(
        result["train_step_s_while_serving"], result["train_step_s_alone"]
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
