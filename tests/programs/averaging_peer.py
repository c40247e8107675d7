"""One replica of a stage for the averaging integration tests (run as a subprocess).

It loads layers [2, 4) of the tiny model with a LoRA adapter, computes a real backward on its
own seeded data each round, averages the adapter gradients with the other replicas through
:class:`lora.averaging.StageGradientAverager`, applies the step through :class:`lora.StepGuard`
and writes everything the test checks into ``--workdir``:

``<name>.rR.local.pt`` / ``.avg.pt`` / ``.params.pt``  gradients before / after averaging,
parameters after the step; ``<name>.reports.jsonl`` one AveragingReport per round;
``<name>.loaded.pt`` what a late joiner downloaded; ``<name>.ready`` / ``.done`` markers.
Files are written to a temporary name and renamed, so the test never reads half a file.

Faults it can inject: ``--die-in-round`` SIGKILLs its whole process group mid all-reduce;
``--fail-round R --fail-delay D`` makes its first all-reduce of round R raise D seconds after it
finished (the groupmates got their results, this replica keeps its local gradient) — the
"one survivor failed, the other completed" interleaving, on demand; ``--lag-round R --lag S``
makes it arrive S seconds late in round R while reporting training activity (a slow trainer).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import torch  # noqa: E402

from base.errors import Node0Error  # noqa: E402
from lora import LoraSettings, StepGuard, adapter_parameters, attach_adapter  # noqa: E402
from lora.config import AveragingSettings  # noqa: E402

SPAN = (2, 4)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _touch(path: Path, text: str = "") -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--bootstrap", action="store_true", help="start the DHT, write maddrs")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=float, default=1.0)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--extra-numel", type=int, default=0, help="an extra big tensor")
    parser.add_argument("--nan-round", type=int, default=-1)
    parser.add_argument("--die-in-round", type=int, default=-1)
    parser.add_argument("--fail-round", type=int, default=-1)
    parser.add_argument("--fail-delay", type=float, default=0.0)
    parser.add_argument(
        "--lag-round",
        type=int,
        default=-1,
        help="in this round, keep "
        "computing (activity reported every second) for --lag seconds first",
    )
    parser.add_argument("--lag", type=float, default=0.0)
    parser.add_argument(
        "--poison-round",
        type=int,
        default=-1,
        help="in this round, send a poisoned gradient to the group (the local one is kept)",
    )
    parser.add_argument(
        "--poison", default="1e4", help="a factor the sent gradient is multiplied by, or nan"
    )
    parser.add_argument(
        "--credential", type=Path, default=None, help="a private swarm: this replica's credential"
    )
    parser.add_argument(
        "--sync-with",
        default="",
        help="comma-separated replicas whose previous round must be done before this one starts",
    )
    parser.add_argument("--matchmaking-timeout", type=float, default=None)
    parser.add_argument("--min-matchmaking-time", type=float, default=None)
    parser.add_argument("--load-state", action="store_true")
    parser.add_argument("--hold", action="store_true", help="stay up until <workdir>/stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
    for name in ("lora", "security"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    work = args.workdir

    from base.dht import start_dht, visible_maddrs
    from lora.averaging import StageGradientAverager, averaging_prefix
    from pipeline_stages.loader import load_stage

    stage = load_stage(args.model_dir, *SPAN)
    lora = LoraSettings(rank=args.rank, alpha=8, init_seed=7)
    attach_adapter(stage, "code-review", lora)
    params = adapter_parameters(stage, "code-review")
    if args.extra_numel:
        params.append(torch.nn.Parameter(torch.zeros(args.extra_numel)))
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    guard = StepGuard(params, max_grad_norm=1.0)

    maddrs_file = work / "maddrs.json"
    authorizer = None
    if args.credential:  # as a daemon of a private swarm: DHT authorizer and averaging gate
        from security.access import PeerAccess, install

        access = PeerAccess.for_daemon(args.credential, None, False)
        install(access)
        authorizer = access.dht_authorizer()
    if args.bootstrap:
        dht = start_dht([], authorizer=authorizer)
        _touch(maddrs_file, json.dumps(visible_maddrs(dht)))
    else:
        _wait_for(maddrs_file, 120)
        dht = start_dht(json.loads(maddrs_file.read_text()), authorizer=authorizer)
    overrides = {
        key: value
        for key, value in (
            ("matchmaking_timeout", args.matchmaking_timeout),
            ("min_matchmaking_time", args.min_matchmaking_time),
        )
        if value is not None
    }
    settings = AveragingSettings(target_group_size=args.group, min_group_size=2, **overrides)
    fail_now = mp.Value("i", 0)  # shared with the averager process forked below
    if args.fail_round >= 0:
        from lora.allreduce_guard import GuardedReplicaAverager

        allreduce = GuardedReplicaAverager._run_allreduce_inplace_

        async def failing_allreduce(self, *a, **kw):
            await allreduce(self, *a, **kw)
            if fail_now.value:
                fail_now.value = 0
                await asyncio.sleep(args.fail_delay)
                raise RuntimeError("injected all-reduce failure")

        GuardedReplicaAverager._run_allreduce_inplace_ = failing_allreduce
    prefix = averaging_prefix(str(args.model_dir), *SPAN, "test-run", "code-review")
    try:
        averager = StageGradientAverager(
            dht, prefix=prefix, params=params, settings=settings, lora=lora, optimizer=optimizer
        )
    except Node0Error as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_code)

    _touch(work / f"{args.name}.peer", averager._peer)
    if args.poison_round >= 0:  # a broken or malicious replica: what it sends, not what it holds
        honest_attempt = averager._attempt

        def poisoned_attempt(local, weight, gather):
            if averager.rounds == args.poison_round + 1:
                if args.poison == "nan":
                    local = [torch.full_like(t, float("nan")) for t in local]
                else:
                    local = [t * float(args.poison) for t in local]
                weight = max(weight, 1.0)
            return honest_attempt(local, weight, gather)

        averager._attempt = poisoned_attempt

    if args.load_state:
        started = time.monotonic()
        loaded = averager.load_state_from_peers(timeout=30)
        seconds = time.monotonic() - started
        _save(
            work / f"{args.name}.loaded.pt",
            {
                "params": [p.detach().clone() for p in params],
                "optimizer": optimizer.state_dict()["state"],
                "step": None if loaded is None else loaded.step,
                "seconds": seconds,
            },
        )

    if args.die_in_round >= 0:

        def die_mid_round() -> None:
            from hivemind.averaging.control import AveragingStage

            while True:
                if (
                    averager.rounds == args.die_in_round + 1
                    and averager.stage == AveragingStage.RUNNING_ALLREDUCE
                ):
                    time.sleep(0.05)
                    _touch(work / f"{args.name}.dying")
                    os.killpg(os.getpgid(0), signal.SIGKILL)  # the averager's children too
                time.sleep(0.005)

        threading.Thread(target=die_mid_round, daemon=True).start()

    _touch(work / f"{args.name}.ready")
    if args.rounds:
        _wait_for(work / "go", 120)
    for rnd in range(args.rounds):
        for other in filter(None, args.sync_with.split(",")):
            if rnd:
                _wait_for(work / f"{other}.r{rnd - 1}.params.pt", 180)
        fail_now.value = int(rnd == args.fail_round)
        generator = torch.Generator().manual_seed(1000 * args.seed + rnd)
        hidden = torch.randn(2, 6, 64, generator=generator)  # this replica's data
        stage(hidden).square().mean().backward()
        if args.extra_numel:
            params[-1].grad = torch.randn(args.extra_numel, generator=generator)
        if rnd == args.nan_round:
            params[0].grad[0, 0] = float("nan")
        _save(work / f"{args.name}.r{rnd}.local.pt", [p.grad.detach().clone() for p in params])
        if rnd == args.lag_round:  # a slow trainer: still feeding this replica, step not done
            lag_until = time.monotonic() + args.lag
            while time.monotonic() < lag_until:
                averager.note_activity()
                time.sleep(min(1.0, max(lag_until - time.monotonic(), 0.0)))
        report = averager.average(args.samples)
        _save(work / f"{args.name}.r{rnd}.avg.pt", [p.grad.detach().clone() for p in params])
        with open(work / f"{args.name}.reports.jsonl", "a") as handle:
            handle.write(json.dumps(dataclasses.asdict(report)) + "\n")
        guard.step(optimizer)
        averager.set_step(guard.applied)
        _save(
            work / f"{args.name}.r{rnd}.params.pt",
            {
                "params": [p.detach().clone() for p in params],
                "optimizer": optimizer.state_dict()["state"],
                "step": guard.applied,
            },
        )
    _touch(work / f"{args.name}.done")
    if args.hold:
        _wait_for(work / "stop", 300)
    averager.shutdown()
    dht.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
