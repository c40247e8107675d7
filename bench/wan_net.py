"""An emulated wide-area network on one Linux machine: namespaces, veth links, a delay proxy.

The kernel here has no ``netem``, so delay comes from a userspace TCP proxy and loss from
nftables. The layout (one ``/16`` picked per instance, ``10.R.0.0/16``)::

    root namespace (test / bench process, 10.R.250.2)
        │ veth
    router namespace ── nft: every TCP connection is redirected into the delay proxy;
        │ veth …            1 % of the packets that arrive from any host are dropped
    host namespaces 0…n-1 (10.R.k.2, default route via the router)

Every TCP connection between two hosts, or between the root namespace and a host, crosses the
router, where an nftables ``redirect`` hands it to the proxy (a transparent proxy: it reads the
original destination with ``SO_ORIGINAL_DST`` and connects there itself). So daemons announce
their real addresses and still every byte between hosts is delayed: gRPC between client and
stages, and hivemind's ``p2pd`` traffic (DHT, averaging) between stage hosts alike. Traffic
inside one namespace (a daemon and its own ``p2pd``) is not delayed.

The proxy holds each direction's bytes in a timestamped queue and releases them ``delay`` later
(RTT/2 each way, so one round trip through it costs RTT); it stops reading a direction while
that direction has a bandwidth-delay product queued, so TCP's own flow control takes over
(rather than an unbounded buffer). Sockets on both sides have ``TCP_NODELAY``. The delay lives
in a file the proxy re-reads every 0.1 s, so a bench changes the RTT without restarting the
swarm (:meth:`WanNetwork.set_rtt`).

Everything made is removed by :meth:`WanNetwork.close` (also on failure, and at exit), and
leftovers of a dead earlier instance (its pid is in the names) by :func:`remove_stale`.
Needs root, ``ip`` and ``nft`` (Debian ``nftables``); :func:`unavailable_reason` says why not.

    python -m bench.wan_net proxy --port 7000 --delay-file F   (run by WanNetwork, in the router)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROXY_PORT = 7411  # in the router namespace; the nft redirect target
_SO_ORIGINAL_DST = 80
_PREFIX = "node0wan"
_REPO = Path(__file__).resolve().parent.parent


# --- the delay proxy (runs in the router namespace) ----------------------------------------------


class _Delay:
    """One-way delay in seconds, re-read from a file (written by :meth:`WanNetwork.set_rtt`)."""

    def __init__(self, path: Path):
        self.path = path
        self.value = 0.0
        self._mtime = None
        self.refresh()

    def refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self.value = float(self.path.read_text().split()[0])
                self._mtime = mtime
        except (OSError, ValueError, IndexError):
            pass


async def _pump(reader, writer, delay: _Delay, cap_bytes: int) -> None:
    """Copy ``reader`` to ``writer``, each chunk released ``delay`` after it arrived."""
    queue: asyncio.Queue = asyncio.Queue()
    queued = 0
    room = asyncio.Event()
    room.set()

    async def release() -> None:
        nonlocal queued
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            queued -= len(data)
            if queued < cap_bytes:
                room.set()
            await writer.drain()

    releaser = asyncio.create_task(release())
    loop = asyncio.get_running_loop()
    try:
        while True:
            await room.wait()
            data = await reader.read(1 << 16)
            due = loop.time() + delay.value
            if not data:
                queue.put_nowait((due, None))
                break
            queued += len(data)
            if queued >= cap_bytes:  # a bandwidth-delay product in flight: stop reading
                room.clear()
            queue.put_nowait((due, data))
        await releaser
    except (OSError, asyncio.CancelledError):
        releaser.cancel()
        raise


def _original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


async def _serve_proxy(port: int, delay: _Delay, bandwidth_bps: float) -> None:
    async def handle(reader, writer) -> None:
        sock = writer.get_extra_info("socket")
        host, dport = _original_destination(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.sleep(delay.value)  # the SYN's way there: connect costs one RTT too
        try:
            up_reader, up_writer = await asyncio.open_connection(host, dport)
        except OSError:
            writer.close()
            return
        up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cap = max(1 << 16, int(bandwidth_bps / 8 * max(delay.value, 0.001)))
        pumps = [
            asyncio.create_task(_pump(reader, up_writer, delay, cap)),
            asyncio.create_task(_pump(up_reader, writer, delay, cap)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.gather(*pumps)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=512)

    async def refresh() -> None:
        while True:
            delay.refresh()
            await asyncio.sleep(0.1)

    refresher = asyncio.create_task(refresh())
    async with server:
        await server.serve_forever()
    refresher.cancel()


# --- the network -------------------------------------------------------------------------------


def _run(*cmd: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why a :class:`WanNetwork` cannot be made here, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, nftables)"
    name = f"{_PREFIX}-probe-{os.getpid()}"
    probe = _run("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    try:
        nat = _run(
            "ip",
            "netns",
            "exec",
            name,
            "nft",
            "-f",
            "-",
            check=False,
            stdin="table ip t {\n chain p {\n type nat hook prerouting priority dstnat;\n"
            " ip protocol tcp redirect to :1\n }\n}\n",
        )
        if nat.returncode != 0:
            return f"nftables cannot redirect (no nf_nat?): {nat.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def remove_stale() -> int:
    """Delete namespaces and links of earlier instances whose process is gone; returns how many."""
    removed = 0
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == _PREFIX and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
                continue  # its owner is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            _run("ip", "netns", "del", name, check=False)
            removed += 1
    return removed


def _free_subnet() -> int:
    routes = _run("ip", "-4", "route", "show", check=False).stdout
    addrs = _run("ip", "-4", "addr", "show", check=False).stdout
    candidates = list(range(200, 250))
    secrets.SystemRandom().shuffle(candidates)
    for r in candidates:
        net = ipaddress.ip_network(f"10.{r}.0.0/16")
        used = any(
            token.split("/")[0].count(".") == 3 and ipaddress.ip_address(token.split("/")[0]) in net
            for token in (routes + " " + addrs).split()
            if token[:1].isdigit() and token.split("/")[0].replace(".", "").isdigit()
        )
        if not used:
            return r
    raise RuntimeError("no free 10.R.0.0/16 for the emulated network")


class WanNetwork:
    """``hosts`` network namespaces behind one router namespace that delays and drops.

    Args:
        hosts: how many host namespaces.
        rtt_ms: round-trip time the proxy adds between any two hosts (and root ↔ host).
        loss: share of packets dropped as they arrive at the router from any host (so each
            direction of every path loses about this share once).
        bandwidth_mbit: with the delay, sizes each direction's queue (the bandwidth-delay
            product); not a rate limit.
    """

    def __init__(
        self, hosts: int, *, rtt_ms: float = 50.0, loss: float = 0.01, bandwidth_mbit=100.0
    ):
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        remove_stale()
        self.hosts = hosts
        self.loss = loss
        self.bandwidth_mbit = bandwidth_mbit
        tag = secrets.token_hex(3)
        self._tag = tag[:5]
        self._base = f"{_PREFIX}-{os.getpid()}-{tag}"
        self.router = f"{self._base}-r"
        self._made_ns: list[str] = []
        self._root_link = f"nw{self._tag}h"
        self._root_link_made = False
        self._proxy: subprocess.Popen | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="node0-wan-"))
        self._delay_file = self._dir / "delay"
        self.rtt_ms = 0.0
        self.set_rtt(rtt_ms)
        self._r = _free_subnet()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # addresses
    def host_ip(self, index: int) -> str:
        """Host ``index``'s address (what its daemons bind and announce)."""
        return f"10.{self._r}.{index}.2"

    @property
    def root_ip(self) -> str:
        return f"10.{self._r}.250.2"

    def netns(self, index: int) -> str:
        return f"{self._base}-h{index}"

    def exec_prefix(self, index: int) -> list[str]:
        """Prefix a command with this to run it in host ``index``'s namespace."""
        return ["ip", "netns", "exec", self.netns(index)]

    def set_rtt(self, rtt_ms: float) -> None:
        """Change the round-trip time (the proxy picks it up within 0.1 s)."""
        self.rtt_ms = float(rtt_ms)
        tmp = self._delay_file.with_suffix(".tmp")
        tmp.write_text(f"{rtt_ms / 2000.0:.6f}\n")
        os.replace(tmp, self._delay_file)
        time.sleep(0.25)

    def interface_bytes(self) -> int:
        """Bytes the router has received from all hosts and the root namespace so far (its
        interfaces' rx counters: every byte that crossed a link, headers and retransmits
        included)."""
        out = _run("ip", "-n", self.router, "-s", "-j", "link", "show", check=False).stdout
        import json

        total = 0
        for link in json.loads(out or "[]"):
            if link.get("ifname") != "lo":
                total += int(
                    link.get("stats64", link.get("stats", {})).get("rx", {}).get("bytes", 0)
                )
        return total

    # building and removing
    def _ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._made_ns.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        r = self._r
        self._ns(self.router)
        _run("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # root ↔ router
        _run(
            "ip", "link", "add", self._root_link, "type", "veth", "peer", "name", f"nw{self._tag}g"
        )
        self._root_link_made = True
        _run("ip", "link", "set", f"nw{self._tag}g", "netns", self.router)
        _run("ip", "addr", "add", f"{self.root_ip}/24", "dev", self._root_link)
        _run("ip", "link", "set", self._root_link, "up")
        _run("ip", "-n", self.router, "addr", "add", f"10.{r}.250.1/24", "dev", f"nw{self._tag}g")
        _run("ip", "-n", self.router, "link", "set", f"nw{self._tag}g", "up")
        _run("ip", "route", "add", f"10.{r}.0.0/16", "via", f"10.{r}.250.1")
        for k in range(self.hosts):
            ns = self.netns(k)
            self._ns(ns)
            a, b = f"nw{self._tag}a{k}", f"nw{self._tag}b{k}"
            _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _run("ip", "link", "set", a, "netns", self.router)
            _run("ip", "link", "set", b, "netns", ns)
            _run("ip", "-n", self.router, "addr", "add", f"10.{r}.{k}.1/24", "dev", a)
            _run("ip", "-n", self.router, "link", "set", a, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.host_ip(k)}/24", "dev", b)
            _run("ip", "-n", ns, "link", "set", b, "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", f"10.{r}.{k}.1")
        per_mille = round(self.loss * 1000)
        drop = (
            "  chain in {\n    type filter hook input priority 0;\n"
            f'    iifname != "lo" numgen random mod 1000 < {per_mille} drop\n  }}\n'
            if per_mille > 0
            else ""
        )
        rules = (
            "table ip node0wan {\n"
            "  chain pre {\n    type nat hook prerouting priority dstnat;\n"
            f"    ip protocol tcp redirect to :{PROXY_PORT}\n  }}\n"
            f"{drop}"
            "}\n"
        )
        _run("ip", "netns", "exec", self.router, "nft", "-f", "-", stdin=rules)
        self._proxy = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.router, sys.executable, "-m", "bench.wan_net"),
                *("proxy", "--port", str(PROXY_PORT), "--delay-file", str(self._delay_file)),
                *("--bandwidth-mbit", str(self.bandwidth_mbit)),
            ],
            cwd=_REPO,
            stdout=open(self._dir / "proxy.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = _run(
                "ip",
                "netns",
                "exec",
                self.router,
                "ss",
                "-Hltn",
                f"sport = :{PROXY_PORT}",
                check=False,
            )
            if probe.stdout.strip():
                return
            if self._proxy.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"the delay proxy did not start: {(self._dir / 'proxy.log').read_text()[-2000:]}"
        )

    def close(self) -> None:
        """Stop the proxy and delete every namespace and link this instance made."""
        if self._proxy is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proxy.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self._proxy.wait(5)
            self._proxy = None
        for ns in reversed(self._made_ns):  # deleting a namespace deletes its veths
            # whatever still runs in it (a daemon that outlived its test) is killed first
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
        self._made_ns = []
        if self._root_link_made:
            _run("ip", "link", "del", self._root_link, check=False)  # and its route
            self._root_link_made = False
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> WanNetwork:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run the delay proxy (in the router namespace)")
    proxy.add_argument("--port", type=int, default=PROXY_PORT, help="listen port")
    proxy.add_argument("--delay-file", type=Path, required=True, help="one-way delay (s), re-read")
    proxy.add_argument("--bandwidth-mbit", type=float, default=100.0, help="sizes the queue cap")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_serve_proxy(args.port, _Delay(args.delay_file), args.bandwidth_mbit * 1e6))


if __name__ == "__main__":
    main()
