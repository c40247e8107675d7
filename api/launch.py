"""``node0 api`` as a child process (benchmarks and tests start it this way): on a free loopback
port, in its own process group, waited for until ``/health`` says 200, always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def api_process(
    initial_peers: list[str],
    *args: str,
    log: Path,
    cwd: Path | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[str]:
    """Run ``python -m node.cli api --port P *args --initial-peers …`` until the block ends;
    yields its base URL (``http://127.0.0.1:P``). Its output goes to ``log``.

    Raises:
        RuntimeError: the server exited, or was not healthy within ``ready_timeout`` (the
            message holds its log).
    """
    import httpx

    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "api", "--port", str(port), *args]
            + ["--initial-peers", *initial_peers],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"node0 api exited {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node0 api not healthy after {ready_timeout:.0f} s: {log.read_text()}"
                )
            time.sleep(0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
