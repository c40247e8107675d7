"""Three replicas average through hivemind; one sends a gradient ×1e4 (or NaN). The two honest
replicas end with the mean of the honest gradients and name the bad peer.

Each replica is ``tests/programs/averaging_peer.py`` in its own process group (SIGKILLed in
``finally``: hivemind's children and p2pd survive a kill of the main PID alone).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "tests" / "programs" / "averaging_peer.py"
WINDOW = ["--group", "3", "--min-matchmaking-time", "10", "--matchmaking-timeout", "15"]


def _start(work: Path, model_dir: Path, name: str, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HIVEMIND_MEMORY_SHARING_STRATEGY="file_descriptor",
        OMP_NUM_THREADS="1",
    )
    with open(work / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, str(PEER), "--name", name, "--workdir", str(work)]
            + ["--model-dir", str(model_dir), *args],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait(work: Path, names: list[str], procs: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while not (work / name).exists():
            for peer, proc in procs.items():
                if proc.poll() not in (None, 0):
                    log = (work / f"{peer}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{peer} exited {proc.returncode}: {log}")
            assert time.monotonic() < deadline, f"{name} not written within {timeout} s"
            time.sleep(0.1)


@pytest.mark.parametrize("poison", ["1e4", "nan"])
def test_honest_replicas_keep_the_honest_mean_and_report_the_bad_peer(
    tiny_model_dir, tmp_path, poison
):
    names = ["a", "b", "bad"]
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["a"] = _start(tmp_path, tiny_model_dir, "a", "--bootstrap", "--rounds", "1",
                            "--seed", "1", *WINDOW)  # fmt: skip
        procs["b"] = _start(tmp_path, tiny_model_dir, "b", "--rounds", "1", "--seed", "2",
                            *WINDOW)  # fmt: skip
        procs["bad"] = _start(tmp_path, tiny_model_dir, "bad", "--rounds", "1", "--seed", "3",
                              "--poison-round", "0", "--poison", poison, *WINDOW)  # fmt: skip
        _wait(tmp_path, [f"{n}.ready" for n in names], procs, 180)
        (tmp_path / "go").write_text("")
        _wait(tmp_path, ["a.done", "b.done"], procs, 180)

        local = {n: torch.load(tmp_path / f"{n}.r0.local.pt") for n in ("a", "b")}
        honest_mean = [
            (x.double() + y.double()) / 2 for x, y in zip(local["a"], local["b"], strict=True)
        ]
        bad_peer = (tmp_path / "bad.peer").read_text()
        for name in ("a", "b"):
            averaged = torch.load(tmp_path / f"{name}.r0.avg.pt")
            diff = max(
                float((x.double() - y).abs().max())
                for x, y in zip(averaged, honest_mean, strict=True)
            )
            report = json.loads((tmp_path / f"{name}.reports.jsonl").read_text().splitlines()[0])
            print(f"{poison}: {name} max |avg - honest mean| = {diff:.2e}; {report['excluded']}")
            assert report["averaged"], report
            assert diff <= 1e-6
            assert bad_peer in {peer for peer, _ in report["excluded"]}, report
            assert f"excluded peer {bad_peer}" in (tmp_path / f"{name}.log").read_text()
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
