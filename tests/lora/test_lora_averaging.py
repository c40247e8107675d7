"""Gradient averaging between real replica processes (hivemind DHT + averager on 127.0.0.1).

Each replica is ``tests/programs/averaging_peer.py`` in its own process group; every group is
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
PEER = REPO / "tests" / "programs" / "averaging_peer.py"


class Replicas:
    def __init__(self, workdir: Path, model_dir: Path):
        self.workdir, self.model_dir = workdir, model_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.expected_to_fail: set[str] = set()

    def start(self, name: str, *args: str, fails: bool = False) -> subprocess.Popen:
        env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            HIVEMIND_MEMORY_SHARING_STRATEGY="file_descriptor",
            OMP_NUM_THREADS="1",
        )
        with open(self.workdir / f"{name}.log", "w") as log:  # the child keeps its own fd
            proc = subprocess.Popen(
                [
                    "nice",
                    "-n",
                    "10",
                    sys.executable,
                    str(PEER),
                    "--name",
                    name,
                    "--workdir",
                    str(self.workdir),
                    "--model-dir",
                    str(self.model_dir),
                    *args,
                ],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
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
                        raise AssertionError(
                            f"{peer} exited {proc.returncode}: {self.log(peer)[-3000:]}"
                        )
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

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

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
    return [
        sum(w * g[i].double() for g, w in zip(grads, weights, strict=True)) / total
        for i in range(len(grads[0]))
    ]


def test_replicas_hold_the_exact_mean_and_a_late_joiner_loads_their_state(tiny_model_dir, tmp_path):
    names, samples = ["a", "b", "c"], {"a": 3.0, "b": 1.0, "c": 2.0}
    rounds = 3
    # every round must be one group of 3: a wider window than the default 5 s, because under
    # load hivemind's matchmaking once started a group of 2 without the third replica (the
    # protocol then resynced it, but this test checks per-round means)
    window = [
        "--group",
        "3",
        "--hold",
        "--min-matchmaking-time",
        "10",
        "--matchmaking-timeout",
        "15",
    ]
    with replicas(tmp_path, tiny_model_dir) as swarm:
        swarm.start(
            "a", "--bootstrap", "--rounds", str(rounds), "--seed", "1", "--samples", "3", *window
        )
        swarm.start("b", "--rounds", str(rounds), "--seed", "2", "--samples", "1", *window)
        swarm.start(
            "c",
            "--rounds",
            str(rounds),
            "--seed",
            "3",
            "--samples",
            "2",
            "--nan-round",
            "1",
            *window,
        )
        swarm.wait_files([f"{n}.ready" for n in names], 120)
        (tmp_path / "go").write_text("")
        swarm.wait_files([f"{n}.done" for n in names], 150)

        for rnd in range(rounds):
            local = {n: swarm.load(f"{n}.r{rnd}.local.pt") for n in names}
            contributors = [n for n in names if not (rnd == 1 and n == "c")]
            expected = _weighted_mean(
                [local[n] for n in contributors], [samples[n] for n in contributors]
            )
            for name in names:
                report = swarm.reports(name)[rnd]
                assert report["averaged"] and report["consistent"], (name, report)
                assert report["group_size"] == 3 and report["agreeing"] == 3, report
                assert report["local_nonfinite"] == (rnd == 1 and name == "c")
                diff = _max_diff(swarm.load(f"{name}.r{rnd}.avg.pt"), expected)
                print(
                    f"round {rnd} {name}: max |avg - exact mean| = {diff:.2e}, "
                    f"{report['seconds']:.2f} s"
                )
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
            torch.testing.assert_close(
                loaded["optimizer"][index]["exp_avg"], state["exp_avg"], rtol=0, atol=1e-6
            )

        assert mismatched.wait(timeout=120) == 3  # ConfigError's exit code
        assert "another adapter configuration" in swarm.log("e")
        (tmp_path / "stop").write_text("")


def _params(swarm: Replicas, name: str, rnd: int) -> list[torch.Tensor]:
    return swarm.load(f"{name}.r{rnd}.params.pt")["params"]


def _rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest per-tensor ||a - b|| / ||a||: replicas that applied the same averaged gradient
    differ by float rounding only, which Adam can amplify for near-zero gradient entries (up to
    ~1e-4 absolute, 6e-6 relative seen), so parameters are compared relative to their norm."""
    return max(
        float(
            torch.linalg.vector_norm(x.double() - y.double())
            / max(float(torch.linalg.vector_norm(x.double())), 1e-12)
        )
        for x, y in zip(a, b, strict=True)
    )


# Two replicas, rounds kept in step (each waits for the other's previous round), faults injected
# on demand (averaging_peer.py --fail-round/--fail-delay: that replica's all-reduce raises after
# the other one got its result):
#   round 0  a fails 0.5 s after the all-reduce: both see it and redo the round together
#   round 1  nothing happens: a group of 2 starts at once
#   round 2  b fails 9 s after the all-reduce, later than a waits (check_timeout 6 s): a keeps
#            the average, b its local gradient — they diverge, and b says so
#   round 3  their states differ: one copies the other's, both report it, they are equal again
#   round 4  b arrives 14 s late (its trainer is slow), more than matchmaking_timeout (8 s):
#            a sees b alive, training and still at this step, looks again, and they average
#   round 5  b is gone: a returns its local gradient after matchmaking_timeout (8 s)
FAULTS = {
    "a": ["--fail-round", "0", "--fail-delay", "0.5"],
    "b": ["--fail-round", "2", "--fail-delay", "9", "--lag-round", "4", "--lag", "14"],
}
ROUNDS = {"a": 6, "b": 5}


@pytest.fixture(scope="module")
def two_replicas(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two-replicas")
    with replicas(tmp_path, tiny_model_dir) as swarm:
        for name, other, seed in (("a", "b", 1), ("b", "a", 2)):
            swarm.start(
                name,
                *(["--bootstrap"] if name == "a" else []),
                "--seed",
                str(seed),
                "--rounds",
                str(ROUNDS[name]),
                "--group",
                "2",
                "--sync-with",
                other,
                *FAULTS[name],
            )
        swarm.wait_files(["a.ready", "b.ready"], 120)
        (tmp_path / "go").write_text("")
        swarm.wait_files(["a.done", "b.done"], 240)
        for name in ("a", "b"):
            for report in swarm.reports(name):
                print(name, report)
        yield swarm


def test_a_member_whose_allreduce_failed_redoes_the_round_with_the_other(two_replicas):
    swarm = two_replicas
    local = {n: swarm.load(f"{n}.r0.local.pt") for n in ("a", "b")}
    expected = _weighted_mean([local["a"], local["b"]], [1.0, 1.0])
    for name in ("a", "b"):
        report = swarm.reports(name)[0]
        assert report["partial_detected"] and report["attempts"] == 2, report
        assert report["averaged"] and report["consistent"], report
        assert _max_diff(swarm.load(f"{name}.r0.avg.pt"), expected) <= 1e-6
    assert "injected all-reduce failure" in swarm.reports("a")[0]["error"]
    assert _rel_diff(_params(swarm, "a", 0), _params(swarm, "b", 0)) <= 1e-4


def test_a_group_of_two_starts_as_soon_as_both_call(two_replicas):
    for name in ("a", "b"):
        report = two_replicas.reports(name)[1]
        # the group filled on the first attempt: no matchmaking timeout, no second look (how
        # soon it starts is a figure of bench/training.py's averaging rounds)
        assert report["averaged"] and report["attempts"] == 1, report
        assert report["group_size"] == 2 and report["error"] == "", report


def test_a_failure_seen_too_late_to_redo_is_reported_and_repaired_next_round(two_replicas):
    swarm = two_replicas
    late, other = swarm.reports("b")[2], swarm.reports("a")[2]
    # b knows it kept its local gradient after a group; a could not know (b was only late)
    assert not late["averaged"] and not late["consistent"] and late["partial_detected"], late
    assert other["averaged"] and other["missing"] == 1, other
    assert _rel_diff(_params(swarm, "a", 2), _params(swarm, "b", 2)) > 1e-3  # they diverged
    # next round: both see the difference, one copies the other's state, both are equal again
    reports = {n: swarm.reports(n)[3] for n in ("a", "b")}
    assert all(
        r["diverged"] == 1 and r["consistent"] and r["averaged"] for r in reports.values()
    ), reports
    assert sum(r["resynced"] for r in reports.values()) == 1, reports
    local = {n: swarm.load(f"{n}.r3.local.pt") for n in ("a", "b")}
    expected = _weighted_mean([local["a"], local["b"]], [1.0, 1.0])
    for name in ("a", "b"):
        assert _max_diff(swarm.load(f"{name}.r3.avg.pt"), expected) <= 1e-6
    assert _rel_diff(_params(swarm, "a", 3), _params(swarm, "b", 3)) <= 1e-4


def test_a_partner_that_lags_more_than_the_matchmaking_window_still_averages(two_replicas):
    swarm = two_replicas
    report = swarm.reports("a")[4]
    assert report["averaged"] and report["consistent"] and report["group_size"] == 2, report
    # its first attempt ran out the matchmaking window with no group; it looked again
    assert report["attempts"] >= 2 and "could not find a group" in report["error"], report
    local = {n: swarm.load(f"{n}.r4.local.pt") for n in ("a", "b")}
    expected = _weighted_mean([local["a"], local["b"]], [1.0, 1.0])
    for name in ("a", "b"):
        assert _max_diff(swarm.load(f"{name}.r4.avg.pt"), expected) <= 1e-6
    assert _rel_diff(_params(swarm, "a", 4), _params(swarm, "b", 4)) <= 1e-4


def test_a_replica_whose_partner_is_gone_returns_within_matchmaking_timeout(two_replicas):
    report = two_replicas.reports("a")[5]
    assert not report["averaged"] and report["consistent"] and report["group_size"] == 1, report
    # one matchmaking window, then the local gradient: a partner that is gone is not waited for
    assert report["attempts"] == 1 and "could not find a group" in report["error"], report


def test_peer_killed_mid_round_does_not_stall_the_others_and_is_detected(tiny_model_dir, tmp_path):
    names = ["a", "b", "v"]
    extra = ["--extra-numel", "3000000", "--group", "3", "--rounds", "2"]
    with replicas(tmp_path, tiny_model_dir) as swarm:
        swarm.start("a", "--bootstrap", "--seed", "1", "--sync-with", "b", *extra)
        swarm.start("b", "--seed", "2", "--sync-with", "a", *extra)
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
            # the round ended without the dead peer (its last attempt's group left it out), or,
            # when v died too late in the round for a redo (seen once in CI under load: group 3,
            # one attempt), the survivor saw it come back partial
            assert report["group_size"] <= 2 or report["partial_detected"], report
        # v had a group when it died: its groupmates saw the round fail or come back partial (a
        # survivor that was not in v's group, e.g. under load, found no group in time)
        assert any(r["partial_detected"] for r in first.values()), first
        assert all(r["partial_detected"] or r["group_size"] == 1 for r in first.values()), first
        local0 = {n: swarm.load(f"{n}.r0.local.pt") for n in ("a", "b")}
        avg0 = {n: swarm.load(f"{n}.r0.avg.pt") for n in ("a", "b")}
        second = {n: swarm.reports(n)[1] for n in ("a", "b")}
        if _max_diff(avg0["a"], avg0["b"]) <= 1e-6:  # the survivors agreed within the round
            assert all(r["consistent"] for r in first.values()), first
            if first["a"]["attempts"] > 1:  # the redo among the survivors is their exact mean
                assert (
                    _max_diff(avg0["a"], _weighted_mean([local0["a"], local0["b"]], [1.0, 1.0]))
                    <= 1e-6
                )
        else:  # they did not (one failed too late to redo): the next round sees and repairs it
            print("survivors diverged in round 0:", first, second)
            assert all(r["diverged"] == 1 for r in second.values()), second
            assert sum(r["resynced"] for r in second.values()) == 1, second
        # the next round runs between the two survivors, is exact and leaves them equal
        local = {n: swarm.load(f"{n}.r1.local.pt") for n in ("a", "b")}
        expected = _weighted_mean([local["a"], local["b"]], [1.0, 1.0])
        for name in ("a", "b"):
            report = second[name]
            assert report["averaged"] and report["group_size"] == 2, report
            assert report["consistent"], report
            assert _max_diff(swarm.load(f"{name}.r1.avg.pt"), expected) <= 1e-6
        assert _rel_diff(_params(swarm, "a", 1), _params(swarm, "b", 1)) <= 1e-4
