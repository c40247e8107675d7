"""A daemon's one-off compute on a thread that ends: its result, its errors, and its OpenMP team
ending with it (pipeline_stages.passing_thread)."""

from __future__ import annotations

import threading

import pytest

from pipeline_stages.passing_thread import on_passing_thread
from tests.pipeline_stages.openmp_probe import needs_proc, probe


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


# Threads before and after a parallel matrix product run on a passing thread, then after one
# run on a thread that stays (the contrast: its team stays).
TEAM_PROBE = """
from pipeline_stages.passing_thread import on_passing_thread

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
print(json.dumps([before, after_passing, after_a_thread_that_stays(work)]))
"""


@needs_proc
def test_the_openmp_team_ends_with_the_passing_thread():
    before, after_passing, after_staying = probe(TEAM_PROBE)
    assert after_passing == before
    assert after_staying > before  # a thread that stays keeps its team's worker
