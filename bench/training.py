"""Training benchmark: 3-stage swarm vs single-process PEFT, and one hivemind averaging round.

Part 1, throughput. Starts the default 3-stage swarm (one replica per stage, one torch thread
per daemon), opens a LoRA training job on it as ``node0 train`` does, and runs optimizer steps
with :func:`training.pipeline_step.pipeline_train_step`: each batch split into micro-batches of
``--micro-batch-size`` rows that flow through the stages as ``--schedule`` says (both default
to the trainer config's). The reference is transformers +
``peft.get_peft_model`` on the whole model in this process, with the same adapter init, data,
batch, sequence length, loss scaling and AdamW (what ``tests/integration/test_lora_training.py``
proves equal to the swarm); it clips the whole adapter's gradient norm where each stage clips
its own part (the same work). Both see the same batches (the trainer config's loader, in
order), interleaved step by step so background load hits both alike; the reference runs at
the faster of the ``--single-threads`` counts in the warm-up step. tokens/s = non-pad tokens
of the timed steps / their wall time.

Where the time goes: the client times every Forward/Backward/OptimizerStep RPC per hop (summed
over a step's micro-batches); the reference times the same layer ranges inside its own forward
and backward (hooks at the stage boundaries), so hop time − compute ≈ RPC + serialisation per
hop (plus, when stages overlap, their competition for the cores). ``bubble``: per stage, the
share of a step's wall time with no call of the step running on it (median over the timed
steps; the step result's :attr:`~training.pipeline_step.StepResult.bubble`).

Part 2, averaging. Two processes, each a :class:`lora.averaging.StageGradientAverager` over a
DHT on loopback, average random gradients with the real adapter shapes of one SmolLM2 stage
(layers [10, 20), the config's LoRA settings) and of a tiny adapter (rank 1, q_proj only);
one averager at a time (as a stage's job holds one), one warm-up round each, then ``--rounds``
timed rounds (a file barrier lines the peers up).

Last line of output: JSON with the figures and ratios.

    python -m bench.training [--steps 3] [--warmup 1] [--rounds 3] [--single-threads 1,2]
        [--schedule 1f1b|gpipe|sequential] [--micro-batch-size N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import torch  # noqa: E402

from training.schedule import DEFAULT_SCHEDULE, SCHEDULES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
AVERAGING_SPAN = (10, 20)
TINY_LORA = {"rank": 1, "alpha": 2, "target_modules": ["q_proj"]}
PEER_TIMEOUT_S = 300.0


class TimedStage:
    """A :class:`training.stage_client.StageTrainClient` that records each RPC's duration."""

    def __init__(self, client):
        self.client = client
        self.times: dict[str, list[float]] = defaultdict(list)

    def _timed(self, kind: str, call, *args, **kwargs):
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.times[kind].append(time.perf_counter() - started)

    def forward(self, *args, **kwargs):
        return self._timed("forward", self.client.forward, *args, **kwargs)

    def backward(self, *args, **kwargs):
        return self._timed("backward", self.client.backward, *args, **kwargs)

    def optimizer_step(self, *args, **kwargs):
        return self._timed("optimizer", self.client.optimizer_step, *args, **kwargs)

    def step_totals(self) -> dict[str, float]:
        """Seconds per kind of call since the last time, summed (one step's calls)."""
        totals = {kind: sum(values) for kind, values in self.times.items()}
        self.times.clear()
        return totals


class Reference:
    """Single-process PEFT training of the whole model, timed per stage span.

    Forward pre-hooks at the first layer of every stage after the first, and gradient hooks on
    those layers' inputs, split one step into the same per-stage forward and backward pieces as
    the swarm's hops (the last piece includes the final norm, LM head and loss).
    """

    def __init__(self, model_dir, cfg, spans: list[tuple[int, int]]):
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        from lora.stage_adapters import deterministic_init_

        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model = get_peft_model(base, cfg.lora.to_peft(), adapter_name=cfg.adapter)
        deterministic_init_(self.model, cfg.adapter, cfg.lora.init_seed)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.learning_rate,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
        self.max_grad_norm = cfg.max_grad_norm
        self.marks: dict[str, float] = {}
        layers = self.model.base_model.model.model.layers
        for index, (start, _) in enumerate(spans[1:], start=1):
            layers[start].register_forward_pre_hook(self._boundary_hook(index), with_kwargs=True)
        self.stages = len(spans)

    def _boundary_hook(self, index: int):
        def hook(_module, args, kwargs):
            self.marks[f"fwd{index}"] = time.perf_counter()
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.requires_grad:
                hidden.register_hook(
                    lambda grad: self.marks.__setitem__(f"bwd{index}", time.perf_counter())
                )

        return hook

    def step(self, batch, threads: int) -> tuple[float, dict[str, list[float]]]:
        """One optimizer step on ``batch``; returns (seconds, per-stage compute seconds)."""
        from dataload.losses import cross_entropy_sum

        torch.set_num_threads(threads)
        marks = self.marks
        marks.clear()
        started = marks["fwd0"] = time.perf_counter()
        logits = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits  # (batch, seq, vocab)
        loss_sum, _ = cross_entropy_sum(logits, batch.labels)
        marks[f"bwd{self.stages}"] = marks[f"fwd{self.stages}"] = time.perf_counter()
        (loss_sum / batch.counted_tokens).backward()
        marks["bwd0"] = time.perf_counter()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        elapsed = time.perf_counter() - started
        n = self.stages
        split = {
            "forward": [marks[f"fwd{i + 1}"] - marks[f"fwd{i}"] for i in range(n)],
            # backward runs from the last stage to the first
            "backward": [marks[f"bwd{i}"] - marks[f"bwd{i + 1}"] for i in range(n)],
            "optimizer": [time.perf_counter() - marks["bwd0"]],
        }
        return elapsed, split


def non_pad_tokens(batch) -> int:
    return int(batch.attention_mask.sum())


# -- part 1: throughput --------------------------------------------------------------------------


def open_bench_job(records, cfg, job_id: str) -> list:
    """The config's adapter job on one replica of every span (one replica, no checkpoints), as
    ``node0 train`` opens it; returns a training client per stage."""
    from training.route import open_route

    clients, _ = open_route(
        records,
        cfg.model,
        job_id=job_id,
        trainer_id="bench",
        shard_index=0,
        timeout=cfg.step_timeout,
        open_job=lambda c: c.open_job(
            trainable=f"adapter:{cfg.adapter}",
            optimizer=cfg.optimizer,
            model=cfg.model,
            lora=cfg.lora,
            replicas=1,
            checkpoint_every=0,
        ),
    )
    return clients


def measure_training(args, cfg, model_dir: Path, work: Path) -> dict:
    from base.config_loader import load_yaml_config
    from dataload import build_loaders
    from inference.swarm_client import SwarmClient
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from training.config import TrainConfig
    from training.pipeline_step import pipeline_train_step
    from training.trainer import microbatches

    data = cfg.data
    if args.batch_size or args.max_length:
        data = data.model_copy(
            update={
                "batch_size": args.batch_size or data.batch_size,
                "max_length": args.max_length or data.max_length,
            }
        )
    # the trainer's validation of the pipeline settings (schedule, micro-batch vs batch)
    cfg = TrainConfig.model_validate(
        {
            **cfg.model_dump(),
            "data": data.model_dump(),
            "schedule": args.schedule or cfg.schedule,
            "micro_batch_size": args.micro_batch_size or cfg.micro_batch_size,
        }
    )
    micro_batch_size = cfg.micro_batch_size or data.batch_size
    loaders = build_loaders(data, model_dir=model_dir)
    train = loaders.train
    count = args.warmup + args.steps
    batches = [
        train.batch_at(train.position(i // train.num_batches(0), i % train.num_batches(0)))
        for i in range(count)
    ]
    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    # own checkpoint directories: never the default ones other runs use
    preset = preset.model_copy(
        update={"daemon": {**preset.daemon, "state_dir": str(work / "peer-state")}}
    )
    spans = [(s.start, s.end) for peer in preset.peers for s in peer.stages]
    reference = Reference(model_dir, cfg, spans)
    hidden = reference.model.config.hidden_size
    reference.step(batches[0], 1)  # first-call allocations, outside every measurement

    state_file = work / "swarm.json"
    print(f"starting swarm {args.preset} ({len(spans)} stages)", flush=True)
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = SwarmClient(preset.model, state.initial_peers)
    stages: list[TimedStage] = []
    try:
        client.wait_for_route()
        clients = open_bench_job(client.records(), cfg, f"bench-{os.getpid()}")
        stages = [TimedStage(c) for c in clients]

        bubbles, hop_steps = [], []

        def swarm_step(step: int, batch) -> float:
            mbs = microbatches(batch, micro_batch_size)
            started = time.perf_counter()
            result = pipeline_train_step(stages, mbs, step, schedule=cfg.schedule)
            elapsed = time.perf_counter() - started
            assert result.applied, result.reports
            bubbles.append(result.bubble)
            hop_steps.append([stage.step_totals() for stage in stages])
            return elapsed

        # warm-up: the swarm, and the reference at every thread count (it keeps the fastest)
        warm = {"swarm": [], **{f"single_{t}t": [] for t in args.single_threads}}
        for i in range(args.warmup):
            warm["swarm"].append(swarm_step(i, batches[i]))
            for threads in args.single_threads:
                warm[f"single_{threads}t"].append(reference.step(batches[i], threads)[0])
            print(
                "warm-up step " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in warm.items()),
                flush=True,
            )
        threads = min(
            args.single_threads, key=lambda t: sum(warm[f"single_{t}t"]) if args.warmup else t
        )
        bubbles.clear()
        hop_steps.clear()

        rows, splits = [], []
        for i in range(args.warmup, count):
            batch = batches[i]
            if i % 2:  # alternate the order so drifting load hits both alike
                swarm_s = swarm_step(i, batch)
                single_s, split = reference.step(batch, threads)
            else:
                single_s, split = reference.step(batch, threads)
                swarm_s = swarm_step(i, batch)
            rows.append((non_pad_tokens(batch), swarm_s, single_s))
            splits.append(split)
            print(
                f"step {i}: {tuple(batch.input_ids.shape)} {rows[-1][0]} tokens | swarm "
                f"{swarm_s:6.2f} s {rows[-1][0] / swarm_s:6.1f} tok/s | single {single_s:6.2f} "
                f"s {rows[-1][0] / single_s:6.1f} tok/s ({threads} threads)",
                flush=True,
            )
    finally:
        for stage in stages:
            stage.client.close()
        client.close()
        stop_swarm(state_file)

    tokens = sum(r[0] for r in rows)
    swarm_tps = tokens / sum(r[1] for r in rows)
    single_tps = tokens / sum(r[2] for r in rows)

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    hops = {
        kind: [ms([totals[k][kind] for totals in hop_steps]) for k in range(len(stages))]
        for kind in ("forward", "backward")
    }
    compute = {
        kind: [ms([sp[kind][k] for sp in splits]) for k in range(len(spans))]
        for kind in ("forward", "backward")
    }
    optimizer_rpc = ms([max(t["optimizer"] for t in totals) for totals in hop_steps])
    per_step_hops = sum(hops["forward"]) + sum(hops["backward"]) + optimizer_rpc
    per_step_compute = (
        sum(compute["forward"])
        + sum(compute["backward"])
        + ms([sp["optimizer"][0] for sp in splits])
    )
    return {
        "batch_size": data.batch_size,
        "max_length": data.max_length,
        "seq_lengths": [int(b.input_ids.shape[1]) for b in batches[args.warmup :]],
        "steps": args.steps,
        "warmup": args.warmup,
        "stages": len(spans),
        "schedule": cfg.schedule,
        "micro_batch_size": micro_batch_size,
        "microbatches_per_step": -(-data.batch_size // micro_batch_size),
        "stage_threads": preset.daemon.get("torch_threads", "default"),
        "single_threads": threads,
        "warmup_s": {k: [round(x, 2) for x in v] for k, v in warm.items()},
        "tokens": tokens,
        "swarm_step_s": [round(r[1], 2) for r in rows],
        "single_step_s": [round(r[2], 2) for r in rows],
        "swarm_tokens_per_s": round(swarm_tps, 2),
        "single_tokens_per_s": round(single_tps, 2),
        "ratio_tokens_per_s": round(swarm_tps / single_tps, 3),
        # per stage: idle share of the step's wall time (median over the timed steps)
        "bubble": [round(statistics.median(b[k] for b in bubbles), 3) for k in range(len(spans))],
        "hop_rpc_ms": {**hops, "optimizer": optimizer_rpc},
        "stage_compute_ms": {
            **compute,
            "optimizer": ms([sp["optimizer"][0] for sp in splits]),
            "threads": threads,
        },
        # RPC + (de)serialisation per step; under load the noise of either sum can exceed it
        "hops_minus_compute_ms_per_step": round(per_step_hops - per_step_compute, 1),
        "activation_bytes_per_hop": [
            int(b.input_ids.numel()) * hidden * 4 for b in batches[args.warmup :]
        ],
    }


# -- part 2: averaging ---------------------------------------------------------------------------


def _touch(path: Path, text: str = "") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for(path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g} s")
        time.sleep(0.01)


def _random_grads(params, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=generator) for p in params]


def averaging_peer(args) -> int:
    """One replica (child process): averages random gradients ``args.rounds + 1`` times per
    adapter in step with the other replica; writes ``<name>.json``."""
    from base.dht import start_dht, visible_maddrs
    from base.errors import Node0Error
    from lora import LoraSettings, adapter_parameters, attach_adapter
    from lora.averaging import StageGradientAverager, averaging_prefix
    from lora.config import AveragingSettings
    from pipeline_stages.loader import load_stage

    torch.set_num_threads(1)
    work, me = args.workdir, args.averaging_peer
    other = "b" if me == "a" else "a"
    stage = load_stage(args.model_dir, *AVERAGING_SPAN)
    maddrs = work / "maddrs.json"
    if me == "a":
        dht = start_dht([])
        _touch(maddrs, json.dumps(visible_maddrs(dht)))
    else:
        _wait_for(maddrs)
        dht = start_dht(json.loads(maddrs.read_text()))
    rows = []
    # one averager at a time, as a stage's training job has: the tiny adapter, then the full one
    for kind, lora in (
        ("tiny", LoraSettings(**TINY_LORA)),
        ("full", LoraSettings.model_validate_json(args.lora_json)),
    ):
        attach_adapter(stage, kind, lora)
        params = adapter_parameters(stage, kind)
        try:
            averager = StageGradientAverager(
                dht,
                prefix=averaging_prefix("bench", *AVERAGING_SPAN, "bench", kind),
                params=params,
                settings=AveragingSettings(target_group_size=2),
                lora=lora,
                optimizer=torch.optim.AdamW(params),
            )
        except Node0Error as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return int(exc.exit_code)
        for rnd in range(args.rounds + 1):  # round 0: warm-up
            mine = _random_grads(params, 2 * rnd + (me == "b"))
            theirs = _random_grads(params, 2 * rnd + (me == "a"))
            for param, grad in zip(params, mine, strict=True):
                param.grad = grad.clone()
            _touch(work / f"{me}.{kind}.r{rnd}")
            _wait_for(work / f"{other}.{kind}.r{rnd}")
            started = time.perf_counter()
            report = averager.average(1.0)
            wall = time.perf_counter() - started
            error = max(
                float((p.grad - (x + y) / 2).abs().max())
                for p, x, y in zip(params, mine, theirs, strict=True)
            )
            rows.append(
                {
                    "kind": kind,
                    "round": rnd,
                    "wall_s": wall,
                    "seconds": report.seconds,
                    "averaged": report.averaged,
                    "group_size": report.group_size,
                    "max_abs_error": error,
                    "error": report.error,
                    "numel": sum(p.numel() for p in params),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        _touch(work / f"{me}.{kind}.done")
        _wait_for(work / f"{other}.{kind}.done")
        averager.shutdown()
    _touch(work / f"{me}.json", json.dumps(rows))
    dht.shutdown()
    return 0


def measure_averaging(args, cfg, model_dir: Path, work: Path) -> dict:
    """Start the two averaging replicas (own process groups), wait, summarise their rounds."""
    work = work / "averaging"
    work.mkdir()
    procs = []
    try:
        for name in ("a", "b"):
            log = open(work / f"{name}.log", "wb")  # closed in finally
            procs.append(
                (
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "bench.training",
                            "--averaging-peer",
                            name,
                            "--workdir",
                            str(work),
                            "--model-dir",
                            str(model_dir),
                            "--lora-json",
                            cfg.lora.model_dump_json(),
                            "--rounds",
                            str(args.rounds),
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        cwd=REPO,
                    ),
                    log,
                )
            )
        deadline = time.monotonic() + PEER_TIMEOUT_S
        for proc, _ in procs:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise RuntimeError(f"averaging peer exited with {code}; see {work}/*.log")
    finally:
        for proc, log in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the DHT and averager children too
            except ProcessLookupError:
                pass
            proc.wait()
            log.close()
    rows = {name: json.loads((work / f"{name}.json").read_text()) for name in ("a", "b")}
    summary = {}
    for kind in ("full", "tiny"):
        pairs = [
            (x, y)
            for x, y in zip(rows["a"], rows["b"], strict=True)
            if x["kind"] == kind and x["round"] > 0
        ]  # round 0 is the warm-up
        assert all(x["averaged"] and y["averaged"] for x, y in pairs), pairs
        walls = [max(x["wall_s"], y["wall_s"]) for x, y in pairs]
        numel = pairs[0][0]["numel"]
        summary[kind] = {
            "numel": numel,
            "bytes": numel * 4,
            "round_s": round(statistics.median(walls), 3),
            "rounds_s": [round(w, 3) for w in walls],
            "max_abs_error_vs_mean": max(
                max(x["max_abs_error"], y["max_abs_error"]) for x, y in pairs
            ),
        }
        print(
            f"averaging {kind}: {numel} params = {numel * 4 / 1e6:.3f} MB; rounds "
            + ", ".join(f"{w:.2f} s" for w in walls)
            + f"; max |avg - mean| {summary[kind]['max_abs_error_vs_mean']:.1e}",
            flush=True,
        )
    return summary


# -- entry ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        default="configs/train/smollm2-gastown.yaml",
        help="trainer config: model, LoRA settings, data, batch, optimizer",
    )
    parser.add_argument("--preset", default="smollm2-3stage", help="local swarm preset")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="rows per step (default: the config's)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="max tokens per row (default: the config's)"
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="pipeline schedule of the swarm steps (default: the config's; "
        f"TrainConfig's default is {DEFAULT_SCHEDULE})",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="rows per micro-batch (default: the config's, else the whole batch)",
    )
    parser.add_argument(
        "--single-threads",
        default="1,2",
        help="torch thread counts tried for the reference in the warm-up",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed averaging rounds")
    parser.add_argument("--skip-training", action="store_true", help="averaging only")
    parser.add_argument("--skip-averaging", action="store_true", help="throughput only")
    parser.add_argument(
        "--averaging-peer",
        choices=("a", "b"),
        default=None,
        help="internal: run as one averaging replica",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="internal: peer directory")
    parser.add_argument("--model-dir", type=Path, default=None, help="internal: model dir")
    parser.add_argument("--lora-json", default="", help="internal: LoRA settings (JSON)")
    args = parser.parse_args()
    if args.averaging_peer:
        return averaging_peer(args)
    args.single_threads = [int(t) for t in args.single_threads.split(",")]

    from base.config_loader import load_yaml_config
    from models.assets import prepare_model
    from models.catalog import CATALOG, resolve_model_dir
    from training.config import TrainConfig

    cfg, _ = load_yaml_config(args.config, TrainConfig)
    if cfg.model in CATALOG:
        prepare_model(cfg.model)
    model_dir = Path(resolve_model_dir(cfg.model))
    work = Path(tempfile.mkdtemp(prefix="node0-bench-training-"))
    loads = [os.getloadavg()[0]]
    started = time.monotonic()
    result: dict = {}
    if not args.skip_training:
        result.update(measure_training(args, cfg, model_dir, work))
        loads.append(os.getloadavg()[0])
        print("training: " + json.dumps(result), flush=True)  # kept if averaging fails
    averaging = None
    if not args.skip_averaging:
        try:
            averaging = measure_averaging(args, cfg, model_dir, work)
        except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as exc:
            result["averaging_error"] = f"{type(exc).__name__}: {exc}"
            print(f"averaging failed: {result['averaging_error']}", flush=True)
        loads.append(os.getloadavg()[0])
    if averaging is not None:
        full, tiny = averaging["full"], averaging["tiny"]
        result["averaging"] = averaging
        result["averaging_round_s"] = full["round_s"]
        result["averaging_bytes"] = full["bytes"]
        result["averaging_MB_per_s"] = round(full["bytes"] / 1e6 / full["round_s"], 2)
        result["ratio_averaging_full_over_tiny"] = round(full["round_s"] / tiny["round_s"], 2)
        if "swarm_step_s" in result:
            result["ratio_averaging_round_over_swarm_step"] = round(
                full["round_s"] / statistics.median(result["swarm_step_s"]), 3
            )
    result["load_avg_1min"] = [round(x, 1) for x in loads]
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 1 if "averaging_error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
