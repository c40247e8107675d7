"""Two replicas training a LoRA adapter on their own data, averaging through hivemind.

The averaging experiment of ``bench/wan.py`` and the ``wan`` tests: each replica is a process
in its own host namespace of a :class:`~bench.wan_net.WanNetwork` (so every averaging byte
crosses the emulated link and the router's counters), holding the whole tiny model with a LoRA
adapter on every projection. Each optimizer step it computes a real backward on its own shard of
a synthetic language (a fixed random bigram table: the loss can fall a long way), averages the
adapter gradients with :class:`lora.averaging.StageGradientAverager` (the node0 averager with
its defences; ``--compression`` none / float16 / int8) and steps AdamW. ``--local-steps K > 1``
is the DiLoCo mode (:mod:`lora.diloco`, the outer loop ``node0 train``'s stage jobs run under
``averaging: {mode: diloco}``): K local AdamW steps, then one averaged pseudo-gradient step
with outer Nesterov SGD. Both replicas score the same held-out batches.

:func:`run_pair` starts both, waits, and returns their results with the bytes the router
received from them while they trained (interface counters: headers and retransmits included).

    python -m bench.wan_averaging replica --name a --work DIR --model-dir DIR --host IP ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

_REPO = Path(__file__).resolve().parent.parent
SEQ_LEN = 32
BATCH = 8


def _language(vocab: int):
    """A fixed bigram table: from each token, 4 likely successors (same on every replica)."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    successors = torch.randint(3, vocab, (vocab, 4), generator=generator)
    return successors


def _batch(successors, seed: int, rows: int = BATCH):
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = successors.shape[0]
    x = torch.empty(rows, SEQ_LEN, dtype=torch.long)
    x[:, 0] = torch.randint(3, vocab, (rows,), generator=generator)
    for t in range(1, SEQ_LEN):
        pick = torch.randint(0, 4, (rows,), generator=generator)
        x[:, t] = successors[x[:, t - 1], pick]
    return x


def _touch(path: Path, text: str = "") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{[str(p) for p in paths]} not all there after {timeout} s")
        time.sleep(0.05)


def _count_received_tensor_bytes():
    """Count the serialized bytes of every tensor part hivemind's all-reduce decodes (a
    counter in shared memory: the all-reduce runs in the forked averager process)."""
    import multiprocessing as mp

    from hivemind.averaging import allreduce

    from lora import shared_results

    counter = mp.Value("q", 0)
    decode = allreduce.deserialize_torch_tensor

    def counting(serialized):
        with counter.get_lock():
            counter.value += serialized.ByteSize()
        return decode(serialized)

    allreduce.deserialize_torch_tensor = counting  # senders' results, hivemind's reducers
    shared_results.deserialize_torch_tensor = counting  # int8 reducers' incoming parts
    return counter


def _count_dht_requests():
    """Count the store and find requests this replica's DHT node serves and their bytes
    (request plus response, serialized; libp2p framing not included): the matchmaking,
    checksum, presence and state-declaration records of the rounds (a store is a find of the
    key's nodes, then the store). Patched before the DHT process forks."""
    import functools
    import multiprocessing as mp

    from hivemind.dht.protocol import DHTProtocol

    counter = mp.Array("q", 2)  # requests, bytes

    def counting(original):
        @functools.wraps(original)  # hivemind builds the handler from the annotations
        async def handler(self, request, context):
            response = await original(self, request, context)
            with counter.get_lock():
                counter[0] += 1
                counter[1] += request.ByteSize() + response.ByteSize()
            return response

        return handler

    # not rpc_ping: the store and find handlers call it on themselves (no traffic)
    for name in ("rpc_store", "rpc_find"):
        setattr(DHTProtocol, name, counting(getattr(DHTProtocol, name)))
    return counter


def replica(args) -> None:
    import torch
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    from base.dht import start_dht, visible_maddrs
    from lora import LoraSettings
    from lora.averaging import StageGradientAverager, averaging_prefix
    from lora.config import AveragingSettings
    from lora.diloco import DiLoCoOuter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    work = args.work
    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank, init_seed=7)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(args.model_dir), lora.to_peft())
    named = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    params = [p for _, p in named]
    generator = torch.Generator().manual_seed(7)  # same adapter init on every replica
    with torch.no_grad():
        for name, param in named:
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    inner = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    diloco = None
    mode = "diloco" if args.local_steps > 1 else "per_step"
    received = _count_received_tensor_bytes()  # before the averager process forks
    dht_served = _count_dht_requests()  # before the DHT process forks
    maddrs = work / "maddrs.json"
    host_maddrs = [f"/ip4/{args.host}/tcp/0"]
    if args.bootstrap:
        dht = start_dht([], host_maddrs=host_maddrs)
        _touch(maddrs, json.dumps(visible_maddrs(dht)))
    else:
        _wait_for([maddrs], 120)
        dht = start_dht(json.loads(maddrs.read_text()), host_maddrs=host_maddrs)
    settings = AveragingSettings(
        target_group_size=2,
        compression=args.compression,
        request_timeout=5.0,
        min_matchmaking_time=8.0,
        matchmaking_timeout=20.0,
        mode=mode,
        local_steps=args.local_steps,
        outer_lr=args.outer_lr,
        outer_momentum=args.outer_momentum,
    )
    if mode == "diloco":  # the outer loop of `node0 train`'s stage jobs, from the same settings
        diloco = DiLoCoOuter.from_settings(params, settings)
    averager = StageGradientAverager(
        dht,
        prefix=averaging_prefix(str(args.model_dir), 0, 6, "wan", "wan"),
        params=params,
        settings=settings,
        lora=lora,
        # per-step mode: AdamW's state is shared and compared; DiLoCo: the outer momentum
        optimizer=diloco.outer_optimizer if diloco else inner,
    )
    successors = _language(model.config.vocab_size)
    heldout = [_batch(successors, 10_000 + i) for i in range(4)]

    def heldout_loss() -> float:
        with torch.no_grad():
            return sum(float(model(input_ids=x, labels=x).loss) for x in heldout) / len(heldout)

    _touch(work / f"{args.name}.ready")
    _wait_for([work / "a.ready", work / "b.ready"], 300)
    _touch(work / f"{args.name}.started", str(time.time()))
    losses, rounds = [], []
    for step in range(args.steps):
        x = _batch(successors, 1000 * (args.shard + 1) + step)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        losses.append(float(loss))
        if diloco is None:
            report = averager.average(local_samples=BATCH)
            inner.step()
            inner.zero_grad(set_to_none=True)
            averager.set_step(step + 1)
        else:
            inner.step()
            inner.zero_grad(set_to_none=True)
            report = None
            if diloco.note_inner_step():
                report = diloco.outer_step(lambda: averager.average(local_samples=BATCH))
                averager.set_step(step + 1)
        if report is not None and not rounds:
            _touch(work / f"{args.name}.warm", str(time.time()))  # the first round is done
            received_warm = received.value
            dht_warm = list(dht_served)
        if report is not None:
            rounds.append(
                {"averaged": report.averaged, "consistent": report.consistent,
                 "seconds": round(report.seconds, 3), "resynced": report.resynced}
            )  # fmt: skip
    _touch(work / f"{args.name}.trained", str(time.time()))
    result = {
        "name": args.name,
        "compression": args.compression,
        "local_steps": args.local_steps,
        "losses": losses,
        "heldout_loss": heldout_loss(),
        "rounds": rounds,
        "numel": sum(p.numel() for p in params),
        # serialized tensor parts this replica received (as reducer, and results back) in
        # the rounds after the first: the all-reduce payload, without framing
        "payload_bytes_received": received.value - received_warm,
        # DHT requests this replica's node served in the same rounds, and their bytes
        "dht_requests_served": dht_served[0] - dht_warm[0],
        "dht_bytes_served": dht_served[1] - dht_warm[1],
    }
    _touch(work / f"{args.name}.json", json.dumps(result))
    _wait_for([work / "a.json", work / "b.json"], 120)  # the other may still need our DHT
    averager.shutdown()
    dht.shutdown()


def run_pair(
    net,
    work: Path,
    model_dir: Path,
    *,
    compression: str = "none",
    steps: int = 10,
    local_steps: int = 1,
    lr: float = 3e-3,
    rank: int = 16,
    timeout: float = 600.0,
) -> dict:
    """Two replicas (host namespaces 0 and 1) train ``steps`` steps; returns both results and
    ``bytes`` (router rx bytes from the end of the first averaging round to the end of
    training), ``bytes_per_round`` and ``seconds_per_round`` over the rounds after the first,
    and ``wall_s``; at least two rounds are needed."""
    import signal

    work.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for index, name in enumerate("ab"):
            command = [
                *net.exec_prefix(index),
                *(sys.executable, "-m", "bench.wan_averaging", "replica", "--name", name),
                *("--work", str(work), "--model-dir", str(model_dir)),
                *("--host", net.host_ip(index), "--shard", str(index), "--steps", str(steps)),
                *("--compression", compression, "--local-steps", str(local_steps)),
                *("--lr", str(lr), "--rank", str(rank)),
                *(["--bootstrap"] if index == 0 else []),
            ]
            with open(work / f"{name}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        command,
                        cwd=_REPO,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + timeout
        # from the end of the first round (which also sets up connections and routing
        # tables) to the end of the last: steady-state rounds only
        warm = [work / "a.warm", work / "b.warm"]
        while not all(p.exists() for p in warm):
            _check_alive(procs, work, deadline)
            time.sleep(0.02)
        before, t0 = net.interface_bytes(), time.monotonic()
        trained = [work / "a.trained", work / "b.trained"]
        while not all(p.exists() for p in trained):
            _check_alive(procs, work, deadline)
            time.sleep(0.05)
        sent, wall = net.interface_bytes() - before, time.monotonic() - t0
        for proc in procs:
            proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    results = [json.loads((work / f"{n}.json").read_text()) for n in "ab"]
    later = results[0]["rounds"][1:]
    n_rounds = max(1, len(later))
    return {
        "replicas": results,
        "payload_bytes_per_round": sum(r["payload_bytes_received"] for r in results) / n_rounds,
        "dht_requests_per_round": sum(r["dht_requests_served"] for r in results) / n_rounds,
        "dht_bytes_per_round": sum(r["dht_bytes_served"] for r in results) / n_rounds,
        "bytes": sent,
        "bytes_per_round": sent / n_rounds,
        "seconds_per_round": sum(r["seconds"] for r in later) / n_rounds,
        "wall_s": wall,
    }


def _check_alive(procs, work: Path, deadline: float) -> None:
    for proc, name in zip(procs, "ab", strict=True):
        if proc.poll() is not None and not (work / f"{name}.json").exists():
            tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"replica {name} exited ({proc.returncode}):\n{tail}")
    if time.monotonic() > deadline:
        raise TimeoutError("the averaging replicas did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replica", help="one replica (run by run_pair, in a host namespace)")
    rep.add_argument("--name", required=True, choices=["a", "b"], help="replica name")
    rep.add_argument("--work", type=Path, required=True, help="shared work directory")
    rep.add_argument("--model-dir", type=Path, required=True, help="the tiny model")
    rep.add_argument("--host", required=True, help="this namespace's address (DHT binds it)")
    rep.add_argument("--bootstrap", action="store_true", help="start the DHT")
    rep.add_argument("--shard", type=int, default=0, help="which data shard")
    rep.add_argument("--steps", type=int, default=10, help="optimizer (inner) steps")
    rep.add_argument("--compression", default="none", help="none, float16 or int8")
    rep.add_argument("--local-steps", type=int, default=1, help="DiLoCo K (1: every step)")
    rep.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    rep.add_argument("--outer-lr", type=float, default=0.7, help="DiLoCo outer SGD lr")
    rep.add_argument("--outer-momentum", type=float, default=0.9, help="its Nesterov momentum")
    rep.add_argument("--rank", type=int, default=16, help="LoRA rank")
    args = parser.parse_args()
    replica(args)


if __name__ == "__main__":
    main()
