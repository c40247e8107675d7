"""A fresh Python process that counts its own threads: how the tests here see OpenMP teams
start and end (a team's workers are threads of the process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

# torch with 2 threads; ``threads()`` counts the process's threads, and
# ``after_a_thread_that_stays(work)`` counts them while a thread that ran ``work`` stays alive
# (not counting that thread itself)
PRELUDE = """
import json, os, threading, time, torch
torch.set_num_threads(2)

def threads():
    return len(os.listdir("/proc/self/task"))

def after_a_thread_that_stays(work):
    worked, done = threading.Event(), threading.Event()
    threading.Thread(target=lambda: (work(), worked.set(), done.wait()), daemon=True).start()
    worked.wait(60)
    count = threads() - 1
    done.set()
    return count
"""


def probe(code: str) -> list:
    """Run ``PRELUDE`` then ``code`` in a fresh process; the JSON list its last line prints."""
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
