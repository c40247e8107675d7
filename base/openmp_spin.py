"""How long torch's OpenMP worker threads spin before they sleep, for node0's processes.

torch's CPU kernels run on libgomp. After a parallel region its worker threads spin-wait for
the next one for ``GOMP_SPINCOUNT`` iterations (300,000 by default, several milliseconds)
before they sleep. That suits one process that computes without pause. A swarm stage computes
in bursts (one step, then a wait for the next hop), and several stages, a trainer and the API
often share one machine: after each step the stage's workers would go on spinning for
milliseconds on cores that the next stage needs. A few tens of thousands of iterations still
bridge the gaps between the kernels of one step (microseconds), then the workers sleep.
Measured on the 2-vCPU host with three bfloat16 stages (BENCHMARKS.md, "One OpenMP team per
daemon"): freeing the extra team alone left the hops at 20-22 ms; with this spin as well the
first two stages' hops went from 19.5 to about 15.5 ms.

libgomp reads the variable once, when torch loads it, so :func:`apply` must run before the
first ``import torch`` (``node0``'s entry point calls it first). A value the user set, or an
``OMP_WAIT_POLICY``, is left alone.
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = 50_000


def apply() -> bool:
    """Set ``GOMP_SPINCOUNT`` for this process and its children unless torch is already loaded
    or the user chose a spin policy; whether it was set."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True
