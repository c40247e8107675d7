"""node0's processes set a short OpenMP spin-wait before torch loads (base.openmp_spin)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from base import openmp_spin

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


APPLY = (
    "import os; from base import openmp_spin; "
    "print(openmp_spin.apply(), os.environ.get('GOMP_SPINCOUNT'))"
)


def test_sets_the_spin_count_before_torch_loads():
    assert _run(APPLY) == f"True {openmp_spin.SPIN_COUNT}"


def test_leaves_the_users_choice_alone():
    assert _run(APPLY, GOMP_SPINCOUNT="123") == "False 123"
    assert _run(APPLY, OMP_WAIT_POLICY="active") == "False None"


def test_too_late_once_torch_is_loaded():
    assert _run("import torch; " + APPLY) == "False None"


def test_the_node0_entry_point_sets_it_before_any_command_imports_torch():
    code = (
        "import os, sys; from node import cli\n"
        "try:\n    cli.main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"
    )
    assert _run(code) == f"True {openmp_spin.SPIN_COUNT}"
