"""Gradient averaging between real replica processes (hivemind DHT + averager on 127.0.0.1).

Each replica is ``tests/lora/averaging_peer.py`` in its own process group; every group is
SIGKILLed in ``finally`` (hivemind's DHT/averager children and p2pd survive a kill of the main
PID alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("averaging_peer.py")


class Replicas:
    def __init__(self, workdir: Path, model_dir: Path):
        self.workdir, self.model_dir = workdir, model_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.expected_to_fail: set[str] = set()

    def start(self, name: str, *args: str, fails: bool = False) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(REPO), HIVEMIND_MEMORY_SHARING_STRATEGY=
                   "file_descriptor", OMP_NUM_THREADS="1")
        proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, str(PEER), "--name", name, "--workdir",
             str(self.workdir), "--model-dir", str(self.model_dir), *args],
            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.procs[name] = proc
        if fails:
            self.expected_to_fail.add(name)
        return proc

    def wait_files(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            path = self.workdir / name
            while not path.exists():
                for peer, proc in self.procs.items():
                    if peer in self.expected_to_fail:
                        continue
                    if proc.poll() not in (None, -signal.SIGKILL) and proc.returncode != 0:
                        raise AssertionError(f"{peer} exited {proc.returncode}: "
                                             f"{proc.stderr.read()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path.name} not written within {timeout} s")
                time.sleep(0.1)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def load(self, name: str):
        return torch.load(self.workdir / name, weights_only=True)

    def reports(self, name: str) -> list[dict]:
        path = self.workdir / f"{name}.reports.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@contextmanager
def replicas(tmp_path: Path, model_dir: Path):
    swarm = Replicas(tmp_path, model_dir)
    try:
        yield swarm
    finally:
        swarm.kill_all()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


def _weighted_mean(grads: list[list[torch.Tensor]], weights: list[float]) -> list[torch.Tensor]:
    total = sum(weights)
    return [sum(w * g[i].double() for g, w in zip(grads, weights, strict=True)) / total
            for i in range(len(grads[0]))]


def test_replicas_hold_the_exact_mean_and_a_late_joiner_loads_their_state(tiny_model_dir,
                                                                          tmp_path):
    names, samples = ["a", "b", "c"], {"a": 3.0, "b": 1.0, "c": 2.0}
    rounds = 3
    with replicas(tmp_path, tiny_model_dir) as swarm:
        swarm.start("a", "--bootstrap", "--rounds", str(rounds), "--seed", "1", "--samples",
                    "3", "--group", "3", "--hold")
        swarm.wait_files(["maddrs.json"], 90)
        swarm.start("b", "--rounds", str(rounds), "--seed", "2", "--samples", "1", "--group",
                    "3", "--hold")
        swarm.start("c", "--rounds", str(rounds), "--seed", "3", "--samples", "2", "--group",
                    "3", "--nan-round", "1", "--hold")
        swarm.wait_files([f"{n}.ready" for n in names], 120)
        (tmp_path / "go").write_text("")
        swarm.wait_files([f"{n}.done" for n in names], 150)

        for rnd in range(rounds):
            local = {n: swarm.load(f"{n}.r{rnd}.local.pt") for n in names}
            contributors = [n for n in names if not (rnd == 1 and n == "c")]
            expected = _weighted_mean([local[n] for n in contributors],
                                      [samples[n] for n in contributors])
            for name in names:
                report = swarm.reports(name)[rnd]
                assert report["averaged"] and report["consistent"], (name, report)
                assert report["group_size"] == 3 and report["agreeing"] == 3, report
                assert report["local_nonfinite"] == (rnd == 1 and name == "c")
                diff = _max_diff(swarm.load(f"{name}.r{rnd}.avg.pt"), expected)
                print(f"round {rnd} {name}: max |avg - exact mean| = {diff:.2e}, "
                      f"{report['seconds']:.2f} s")
                assert diff <= 1e-6
            params = {n: swarm.load(f"{n}.r{rnd}.params.pt") for n in names}
            for name in names[1:]:  # every replica applied the same step
                assert _max_diff(params[name]["params"], params["a"]["params"]) <= 1e-6

        # a late joiner downloads adapter tensors, optimizer state and step; at the same time
        # a replica with another adapter configuration tries to join the run
        swarm.start("d", "--load-state", "--group", "3")
        mismatched = swarm.start("e", "--rank", "8", "--group", "3", fails=True)
        swarm.wait_files(["d.loaded.pt"], 120)
        loaded = swarm.load("d.loaded.pt")
        final = swarm.load(f"a.r{rounds - 1}.params.pt")
        print(f"late join: state loaded in {loaded['seconds']:.2f} s, step {loaded['step']}")
        assert loaded["step"] == final["step"] == rounds
        # replicas agree to float rounding (hivemind adds the averaged delta to each local copy)
        assert _max_diff(loaded["params"], final["params"]) <= 1e-6
        for index, state in final["optimizer"].items():
            torch.testing.assert_close(loaded["optimizer"][index]["exp_avg"], state["exp_avg"],
                                       rtol=0, atol=1e-6)

        assert mismatched.wait(timeout=120) == 3  # ConfigError's exit code
        assert "another adapter configuration" in mismatched.stderr.read()
        (tmp_path / "stop").write_text("")


# Opt-in (make test-slow): under heavy CPU load (seen at load 5-9 on a clean-clone CI run) one
# survivor can fail matchmaking after the kill (MatchmakingException, ~60 s) and keep its local
# gradient while the other completes a partial round, so the survivors diverge for that round.
# That is an open defect of the averaging fault path (issue 3); this test shows it when it occurs.
@pytest.mark.slow
def test_peer_killed_mid_round_does_not_stall_the_others_and_is_detected(tiny_model_dir,
                                                                          tmp_path):
    names = ["a", "b", "v"]
    extra = ["--extra-numel", "3000000", "--group", "3", "--rounds", "2"]
    with replicas(tmp_path, tiny_model_dir) as swarm:
        swarm.start("a", "--bootstrap", "--seed", "1", *extra)
        swarm.wait_files(["maddrs.json"], 90)
        swarm.start("b", "--seed", "2", *extra)
        swarm.start("v", "--seed", "3", "--die-in-round", "0", *extra)
        swarm.wait_files([f"{n}.ready" for n in names], 120)
        (tmp_path / "go").write_text("")
        swarm.wait_files(["v.dying"], 90)
        killed_at = time.monotonic()
        swarm.wait_files(["a.done", "b.done"], 150)
        print(f"survivors finished 2 rounds {time.monotonic() - killed_at:.1f} s after the kill")
        assert swarm.procs["v"].wait(timeout=10) == -signal.SIGKILL
        first = {n: swarm.reports(n)[0] for n in ("a", "b")}
        for name, report in first.items():
            print(f"{name} round 0 after the kill: {report}")
            assert report["partial_detected"], report
            assert report["consistent"], report
            assert report["seconds"] < 60
        avg = {n: swarm.load(f"{n}.r0.avg.pt") for n in ("a", "b")}
        assert _max_diff(avg["a"], avg["b"]) <= 1e-6  # survivors agree
        if first["a"]["attempts"] > 1:  # the redo among the survivors is their exact mean
            local0 = {n: swarm.load(f"{n}.r0.local.pt") for n in ("a", "b")}
            assert _max_diff(avg["a"], _weighted_mean([local0["a"], local0["b"]],
                                                      [1.0, 1.0])) <= 1e-6
        # the next round runs between the two survivors and is exact
        local = {n: swarm.load(f"{n}.r1.local.pt") for n in ("a", "b")}
        expected = _weighted_mean([local["a"], local["b"]], [1.0, 1.0])
        for name in ("a", "b"):
            report = swarm.reports(name)[1]
            assert report["averaged"] and report["group_size"] == 2, report
            assert _max_diff(swarm.load(f"{name}.r1.avg.pt"), expected) <= 1e-6
