"""What the private swarm costs: the same measurements with auth on and off, in one run.

- **decode step per hop**: a 3-stage SmolLM2 swarm started private (default), then with
  ``--insecure-open-swarm`` (clients presenting nothing: ``NODE0_CREDENTIAL=none``); in each,
  ``--sessions`` fresh sessions generate ``--tokens`` greedy tokens; every hop's step time is
  recorded (``PipelineSession.on_hop_step``) and the median of decode steps (one position) is
  compared. A Step stream is checked once when it opens, so a decode step should pay nothing
  but the client interceptor's wrapping of the stream; ``open_session_ms`` is the checked
  unary call (credential cache hit).
- **gather**: ``node0 gather`` of the model (HF safetensors only, no GGUF) from each swarm.
- **averaging round**: two replica processes (``tests/programs/averaging_peer.py``, layers
  [2, 4) of the tiny model) average LoRA gradients for ``--rounds`` rounds, with host
  credentials (DHT authorizer, averaging gate, robust aggregation) and without; median round
  seconds from their reports. Private and open runs alternate ``--repeats`` times (load on a
  shared machine drifts; alternating spreads it over both).

The 1-minute load average is recorded next to every figure (this machine is shared). Last line
JSON::

    nice -n 10 .venv/bin/python -m bench.auth [--sessions 4] [--tokens 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"
REPO = Path(__file__).resolve().parent.parent


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def measure_swarm(work: Path, insecure: bool, sessions: int, tokens: int) -> dict:
    from base.config_loader import load_yaml_config
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    preset, _ = load_yaml_config(resolve_preset_path("smollm2-3stage"), SwarmPreset)
    state_file = work / f"swarm-{insecure}.json"
    os.environ["NODE0_CREDENTIAL"] = "none" if insecure else ""
    state = start_swarm(
        preset,
        "bench-auth",
        runs_dir=work / "runs",
        state_file=state_file,
        insecure_open_swarm=insecure,
    )
    try:
        from base.sampler import SamplingParams
        from inference.generation import generate
        from inference.swarm_client import SwarmClient

        client = SwarmClient(MODEL, state.initial_peers)
        client.wait_for_route()
        tokenizer = client.load_tokenizer()
        prompt = tokenizer("The capital of France is")["input_ids"]
        hop_ms: list[float] = []
        open_ms: list[float] = []

        def on_hop(_index, _record, positions, seconds):
            if positions == 1:
                hop_ms.append(seconds * 1000)

        async def one() -> None:
            session = client.session(max_length=len(prompt) + tokens + 1, on_hop_step=on_hop)
            started = time.perf_counter()
            await session.open()
            open_ms.append((time.perf_counter() - started) * 1000 / 3)  # per hop
            try:
                await generate(
                    session, tokenizer, prompt, max_new_tokens=tokens, sampling=SamplingParams()
                )
            finally:
                await session.close()

        load_before = _load()
        for _ in range(sessions):
            asyncio.run(one())
        decode = {
            "step_ms_per_hop_median": round(statistics.median(hop_ms), 3),
            "open_session_ms_per_hop_median": round(statistics.median(open_ms), 3),
            "steps": len(hop_ms),
            "load_before": load_before,
            "load_after": _load(),
        }
        client.close()
        from checkpoint_gather.gather import GatherOptions, gather
        from provenance import create_run_dir

        out = work / f"gather-{insecure}"
        load_before = _load()
        started = time.perf_counter()
        gather(
            GatherOptions(model=MODEL, out_dir=out, gguf_types=()),
            initial_peers=state.initial_peers,
            run=create_run_dir(work / "runs", "gather"),
        )
        gathered = {
            "seconds": round(time.perf_counter() - started, 3),
            "load_before": load_before,
            "load_after": _load(),
        }
        shutil.rmtree(out, ignore_errors=True)
    finally:
        stop_swarm(state_file)
    return {"decode": decode, "gather": gathered}


def measure_averaging(work: Path, private: bool, rounds: int) -> dict:
    from models.tiny import build_tiny_llama

    run = work / f"avg-{private}"
    run.mkdir(parents=True)
    # the replica program trains layers [2, 4) of the tiny model (the tests' averaging peer)
    model_dir = build_tiny_llama(run / "tiny-llama", seed=0)
    args = ["--model-dir", str(model_dir), "--workdir", str(run), "--rounds", str(rounds)]
    args += ["--group", "2"]
    creds = {}
    if private:
        from security.authority import SwarmAuthority

        authority = SwarmAuthority.init(run / "authority")
        for name in ("a", "b"):
            creds[name] = run / f"{name}.json"
            authority.invite(name, "host").save(creds[name])
    procs = []
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    load_before = _load()
    for name, seed in (("a", "1"), ("b", "2")):
        extra = ["--bootstrap"] if name == "a" else []
        extra += ["--credential", str(creds[name])] if private else []
        log = open(run / f"{name}.log", "w")  # noqa: SIM115 (kept open by the child)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests/programs/averaging_peer.py"),
                    "--name",
                    name,
                    "--seed",
                    seed,
                    *args,
                    *extra,
                ],  # fmt: skip
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )
    try:
        deadline = time.monotonic() + 600
        while not all((run / f"{n}.ready").exists() for n in ("a", "b")):
            assert time.monotonic() < deadline, "replicas not ready"
            time.sleep(0.2)
        (run / "go").write_text("")
        while not all((run / f"{n}.done").exists() for n in ("a", "b")):
            assert time.monotonic() < deadline, "replicas not done"
            time.sleep(0.2)
        seconds = [
            json.loads(line)["seconds"]
            for n in ("a", "b")
            for line in (run / f"{n}.reports.jsonl").read_text().splitlines()
        ]
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    return {
        "round_seconds_median": round(statistics.median(seconds), 3),
        "rounds": len(seconds) // 2,
        "seconds": [round(x, 3) for x in seconds],
        "load_before": load_before,
        "load_after": _load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="sessions per swarm")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per session")
    parser.add_argument("--rounds", type=int, default=3, help="averaging rounds per run")
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating private/open averaging runs"
    )
    parser.add_argument("--skip-averaging", action="store_true")
    parser.add_argument("--skip-swarm", action="store_true", help="only the averaging rounds")
    args = parser.parse_args()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {uptime}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    try:
        result: dict = {"uptime_before": uptime}
        for insecure in () if args.skip_swarm else (False, True):
            label = "open" if insecure else "private"
            result[label] = measure_swarm(work, insecure, args.sessions, args.tokens)
            print(f"{label}: {result[label]}", file=sys.stderr)
        os.environ.pop("NODE0_CREDENTIAL", None)
        if not args.skip_averaging:
            runs: dict[str, list[dict]] = {"averaging_private": [], "averaging_open": []}
            for repeat in range(args.repeats):
                for private in (True, False):
                    label = "averaging_private" if private else "averaging_open"
                    run = measure_averaging(work / f"r{repeat}", private, args.rounds)
                    runs[label].append(run)
                    print(f"{label}: {run}", file=sys.stderr)
            for label, done in runs.items():
                seconds = [x for run in done for x in run.pop("seconds")]
                result[label] = {
                    "round_seconds_median": round(statistics.median(seconds), 3),
                    "rounds": len(seconds) // 2,
                    "runs": done,
                }
        if not args.skip_swarm:
            p, o = result["private"], result["open"]
            result["added_ms_per_decode_step_per_hop"] = round(
                p["decode"]["step_ms_per_hop_median"] - o["decode"]["step_ms_per_hop_median"], 3
            )
            result["gather_ratio"] = round(p["gather"]["seconds"] / o["gather"]["seconds"], 3)
        if not args.skip_averaging:
            result["averaging_round_ratio"] = round(
                result["averaging_private"]["round_seconds_median"]
                / result["averaging_open"]["round_seconds_median"],
                3,
            )
        result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
