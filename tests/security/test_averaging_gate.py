"""Averaging admitted, not just reachable: two replicas of a private swarm average; an outsider
(a bare libp2p peer) and a member with a ``client`` credential (admitted to the DHT, which
refuses its membership record: stores are for hosts) calling their averaging handlers directly
get no state and no group, while a ``host`` credential does (the gate is not shut)."""

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

from security.authority import SwarmAuthority

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"


def _start(work: Path, program: str, name: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    with open(work / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                str(PROGRAMS / program),
                "--name",
                name,
                "--workdir",
                str(work),
                *args,
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait(work: Path, files: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for name in files:
        while not (work / name).exists():
            assert time.monotonic() < deadline, f"{name} not written within {timeout} s"
            time.sleep(0.1)


def test_only_host_credentials_reach_the_averager(tiny_model_dir, tmp_path):
    authority = SwarmAuthority.init(tmp_path / "authority")
    creds = {}
    for name, role in (("a", "host"), ("b", "host"), ("friend", "host"), ("nosy", "client")):
        creds[name] = tmp_path / f"{name}.credential.json"
        authority.invite(name, role).save(creds[name])
    model = ["--model-dir", str(tiny_model_dir)]
    window = ["--group", "2", "--rounds", "1", "--hold", "--min-matchmaking-time", "5"]
    procs = {}
    try:
        procs["a"] = _start(tmp_path, "averaging_peer.py", "a", *model, "--bootstrap", "--seed",
                            "1", "--credential", str(creds["a"]), *window)  # fmt: skip
        procs["b"] = _start(tmp_path, "averaging_peer.py", "b", *model, "--seed", "2",
                            "--credential", str(creds["b"]), *window)  # fmt: skip
        _wait(tmp_path, ["a.ready", "b.ready", "a.peer"], 180)
        for name, cred in (
            ("outsider", None),
            ("nosy", creds["nosy"]),
            ("friend", creds["friend"]),
        ):
            extra = ["--credential", str(cred)] if cred else []
            procs[name] = _start(tmp_path, "averaging_intruder.py", name, *model, "--target",
                                 "a", *extra)  # fmt: skip
        (tmp_path / "go").write_text("")
        _wait(tmp_path, [f"intruder-{n}.json" for n in ("outsider", "nosy", "friend")], 180)
        _wait(tmp_path, ["a.done", "b.done"], 180)

        seen = {n: json.loads((tmp_path / f"intruder-{n}.json").read_text()) for n in
                ("outsider", "nosy", "friend")}  # fmt: skip
        print(seen)
        for name in ("outsider", "nosy"):
            assert seen[name]["download_messages"] == 0, seen[name]
            assert "ACCEPTED" not in seen[name]["join_codes"], seen[name]
        assert seen["friend"]["download_messages"] > 0, seen["friend"]  # the gate admits hosts
        log = (tmp_path / "a.log").read_text()
        assert "averaging call refused from peer" in log

        local = [torch.load(tmp_path / f"{n}.r0.local.pt") for n in ("a", "b")]
        mean = [(x.double() + y.double()) / 2 for x, y in zip(*local, strict=True)]
        for name in ("a", "b"):
            report = json.loads((tmp_path / f"{name}.reports.jsonl").read_text().splitlines()[0])
            assert report["averaged"] and report["group_size"] == 2, report
            averaged = torch.load(tmp_path / f"{name}.r0.avg.pt")
            assert (
                max(
                    float((x.double() - y).abs().max()) for x, y in zip(averaged, mean, strict=True)
                )
                <= 1e-6
            )
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
