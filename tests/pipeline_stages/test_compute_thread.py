"""Work handed to another thread keeps the caller's grad modes, and the daemon's threads other
than its compute thread are pinned to one OpenMP thread, so the process holds one OpenMP team
(pipeline_stages.compute_thread)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from pipeline_stages.compute_thread import in_callers_modes, run_here
from tests.pipeline_stages.openmp_probe import needs_proc, probe


def test_the_callers_grad_and_inference_modes_hold_on_another_thread():
    other = ThreadPoolExecutor(max_workers=1)

    def modes():
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def there(fn):
        return other.submit(in_callers_modes(fn)).result()

    with torch.no_grad():
        assert there(modes) == (False, False)
    with torch.enable_grad():
        assert there(modes) == (True, False)
    with torch.inference_mode():
        assert there(modes) == (False, True)
    weight = torch.ones(3, requires_grad=True)
    with torch.enable_grad():
        out = there(lambda: (weight * 2).sum())
    out.backward()  # the graph built there is usable here
    assert weight.grad.tolist() == [2.0, 2.0, 2.0]
    assert run_here(threading.get_ident) == threading.get_ident()
    other.shutdown()


# A process shaped like a daemon: a compute thread (as the scheduler's), a pool of pinned
# handler threads (as gRPC's) and a pinned main thread. It counts its threads after each kind
# of work: the compute thread's first parallel region starts the one team's worker; work over
# torch's parallel grain on the pinned threads (a matrix product through MKL, a fill, a
# conversion, a softmax) starts none. The contrast: an unpinned thread does start one.
TEAM_PROBE = """
from concurrent.futures import ThreadPoolExecutor
from pipeline_stages.compute_thread import pin_to_one_thread

def work():
    a = torch.randn(512, 512)
    a @ a
    torch.zeros(10**6).add_(1)
    torch.ones(4, 10**5, dtype=torch.bfloat16).float()
    torch.randn(8, 49152).softmax(-1)

compute = ThreadPoolExecutor(max_workers=1)
compute.submit(lambda: None).result()
pinned = pin_to_one_thread()  # the main thread too, as a daemon's
handlers = ThreadPoolExecutor(max_workers=3, initializer=pin_to_one_thread)
started = threading.Barrier(3)
list(handlers.map(lambda _: started.wait(), range(3)))  # all three threads at once
before = threads()
compute.submit(work).result()
after_compute = threads()
for _ in range(3):
    list(handlers.map(lambda _: work(), range(3)))
    work()
after_pinned = threads()
print(json.dumps([pinned, before, after_compute, after_pinned, after_a_thread_that_stays(work)]))
"""


@needs_proc
def test_pinned_threads_start_no_openmp_team_beside_the_compute_threads_one():
    pinned, before, after_compute, after_pinned, after_unpinned = probe(TEAM_PROBE)
    assert pinned, "torch's libgomp was not found"
    assert after_compute == before + 1  # the compute thread's team: one worker
    assert after_pinned == after_compute  # no team on any pinned thread
    assert after_unpinned > after_pinned  # an unpinned thread starts one
