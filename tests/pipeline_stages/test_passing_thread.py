"""A daemon's one-off compute on a thread that ends: its result, its errors, and its OpenMP team
ending with it (pipeline_stages.passing_thread)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline_stages.passing_thread import on_passing_thread

ROOT = Path(__file__).resolve().parents[2]


def test_returns_the_result_computed_on_another_thread():
    caller = threading.get_ident()
    ran_on = on_passing_thread(threading.get_ident)
    assert ran_on != caller


def test_raises_what_the_function_raised():
    class Broken(Exception):
        pass

    def fail():
        raise Broken("the stage would not load")

    with pytest.raises(Broken, match="would not load"):
        on_passing_thread(fail)


# A fresh process: counts its threads before and after a parallel matrix product run on a
# passing thread, then after one run on a thread that stays (the contrast: its team stays).
TEAM_PROBE = """
import json, os, threading, time, torch
torch.set_num_threads(2)
from pipeline_stages.passing_thread import on_passing_thread

def threads():
    return len(os.listdir("/proc/self/task"))

def work():
    a = torch.randn(1024, 1024)
    for _ in range(3):
        a @ a

before = threads()
on_passing_thread(work)
deadline = time.monotonic() + 10  # the thread's exit (its team's with it) follows join()
while threads() > before and time.monotonic() < deadline:
    time.sleep(0.01)
after_passing = threads()
worked, done = threading.Event(), threading.Event()

def stay():
    work()
    worked.set()
    done.wait()

threading.Thread(target=stay, daemon=True).start()
worked.wait(60)
after_staying = threads() - 1  # not counting the staying thread itself
done.set()
print(json.dumps([before, after_passing, after_staying]))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_openmp_team_ends_with_the_passing_thread():
    out = subprocess.run(
        [sys.executable, "-c", TEAM_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after_passing, after_staying = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_passing == before
    assert after_staying > before  # a thread that stays keeps its team's worker
