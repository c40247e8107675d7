"""The daemon's one compute thread (its results, errors and the caller's grad modes) and the other
threads pinned to one OpenMP thread, so the process holds one OpenMP team
(pipeline_stages.compute_thread)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from pipeline_stages.compute_thread import ComputeThread, run_here

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compute():
    thread = ComputeThread()
    yield thread
    thread.close()


def test_runs_on_one_other_thread_and_returns_the_result(compute):
    caller = threading.get_ident()
    first = compute.run(threading.get_ident)
    assert first != caller
    assert compute.run(threading.get_ident) == first == compute.ident
    assert run_here(threading.get_ident) == caller


def test_raises_what_the_function_raised(compute):
    class Broken(Exception):
        pass

    def fail():
        raise Broken("the stage would not load")

    with pytest.raises(Broken, match="would not load"):
        compute.run(fail)
    assert compute.run(lambda: 7) == 7  # the thread carries on


def test_a_call_from_the_compute_thread_runs_at_once(compute):
    # a queued call waiting for the thread that runs it would never run
    assert compute.run(lambda: compute.run(threading.get_ident)) == compute.ident


def test_the_callers_grad_and_inference_modes_hold_on_the_compute_thread(compute):
    def modes():
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch.no_grad():
        assert compute.run(modes) == (False, False)
    with torch.enable_grad():
        assert compute.run(modes) == (True, False)
    with torch.inference_mode():
        assert compute.run(modes) == (False, True)
    weight = torch.ones(3, requires_grad=True)
    with torch.enable_grad():
        out = compute.run(lambda: (weight * 2).sum())
    out.backward()  # the graph built there is usable here
    assert weight.grad.tolist() == [2.0, 2.0, 2.0]


# A fresh process shaped like a daemon: a compute thread, a pool of pinned handler threads (as
# gRPC's) and a pinned loop thread (as the scheduler's). It counts its threads after each kind
# of work: the compute thread's first parallel region starts the one team's worker; work over
# torch's parallel grain on the pinned threads (a matrix product through MKL, a fill, a
# conversion, a softmax) starts none. The contrast: an unpinned thread does start one.
TEAM_PROBE = """
import json, os, threading, time, torch
from concurrent.futures import ThreadPoolExecutor
torch.set_num_threads(2)
from pipeline_stages.compute_thread import ComputeThread, pin_to_one_thread

def threads():
    return len(os.listdir("/proc/self/task"))

def work():
    a = torch.randn(512, 512)
    a @ a
    torch.zeros(10**6).add_(1)
    torch.ones(4, 10**5, dtype=torch.bfloat16).float()
    torch.randn(8, 49152).softmax(-1)

compute = ComputeThread()
pinned = pin_to_one_thread()  # the main thread too, as a daemon's
handlers = ThreadPoolExecutor(max_workers=3, initializer=pin_to_one_thread)
started = threading.Barrier(3)
list(handlers.map(lambda _: started.wait(), range(3)))  # all three threads at once
loop = ThreadPoolExecutor(max_workers=1, initializer=pin_to_one_thread)
loop.submit(lambda: None).result()
before = threads()
compute.run(work)
after_compute = threads()
for _ in range(3):
    list(handlers.map(lambda _: work(), range(3)))
    loop.submit(work).result()
    work()
after_pinned = threads()
worked, done = threading.Event(), threading.Event()
unpinned = threading.Thread(target=lambda: (work(), worked.set(), done.wait()), daemon=True)
unpinned.start()
worked.wait(60)
after_unpinned = threads() - 1  # not counting the unpinned thread itself
done.set()
print(json.dumps([pinned, before, after_compute, after_pinned, after_unpinned]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_pinned_threads_start_no_openmp_team_beside_the_compute_threads():
    out = subprocess.run(
        [sys.executable, "-c", TEAM_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pinned, before, after_compute, after_pinned, after_unpinned = json.loads(
        out.stdout.strip().splitlines()[-1]
    )
    assert pinned, "torch's libgomp was not found"
    assert after_compute == before + 1  # the compute thread's team: one worker
    assert after_pinned == after_compute  # no team on any pinned thread
    assert after_unpinned > after_pinned  # an unpinned thread starts one
