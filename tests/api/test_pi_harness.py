"""pi, the real agent harness, on ``node0 api`` over a real 3-stage SmolLM2 swarm.

pi (``@mariozechner/pi-coding-agent``, installed by ``make test`` into ``harnesses/``) is set up
only from what ``node0 provider settings --harness pi --write-pi-config DIR`` writes, in a
temporary ``PI_CODING_AGENT_DIR`` (``PI_OFFLINE=1``, a temporary ``HOME``), and runs the agent
command the entry names with ``-p``. Between pi and the server a recording proxy keeps every
request pi sends and every byte the server streams back, so the test can tell that what pi
printed is what the swarm generated (pi 0.73 prints nothing and exits 0 when a request fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.fixtures import (
    REPO,
    api_server,
    run_cli,
)

# the session's shared swarm (smollm2_swarm: tool adapters trained first) may start in this
# module's setup: minutes on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
KEY = "sk-node0-pi-test"
MAX_TOKENS = 48
PROMPT = "What is the capital of France? Answer in one short sentence."
# read-only tools: the model's tool calls (if any) cannot change anything
TOOLS = "read,grep,find,ls"
PI = REPO / "harnesses" / "node_modules" / ".bin" / "pi"


def _pi_missing() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "node is not installed: pi (an npm package) cannot run"
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if tuple(int(x) for x in version.lstrip("v").split(".")[:2]) < (20, 6):
        return f"node {version} is older than the 20.6 that pi 0.73 needs"
    if not PI.exists():
        return (
            f"pi is not installed at {PI.relative_to(REPO)}: `make test` installs it with npm "
            "(npm ci in harnesses/), which was absent or failed"
        )
    return None


if (_reason := _pi_missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


class RecordingProxy:
    """An HTTP proxy on a free loopback port that forwards to ``upstream`` and records each
    exchange: ``{"path", "request" (JSON body), "status", "body" (bytes as streamed)}``.

    Responses are relayed chunk by chunk as they arrive (server-sent events stay a stream) and
    end with the connection (HTTP/1.0), so no length needs to be known in advance.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def _forward(self, body: bytes | None) -> None:
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "content-type", "accept")
                }
                record = {"path": self.path, "request": json.loads(body) if body else None}
                with httpx.Client(timeout=300) as client:
                    with client.stream(
                        self.command, proxy.upstream + self.path, content=body, headers=headers
                    ) as response:
                        self.send_response(response.status_code)
                        self.send_header("Content-Type", response.headers.get("content-type", ""))
                        self.end_headers()
                        received = bytearray()
                        for chunk in response.iter_raw():
                            received += chunk
                            self.wfile.write(chunk)
                            self.wfile.flush()
                record |= {"status": response.status_code, "body": bytes(received)}
                proxy.exchanges.append(record)

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def sse_events(body: bytes) -> list[dict]:
    """The JSON events of a server-sent-event stream (``[DONE]`` left out)."""
    events = []
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: ") :]))
    return events


def streamed_text(events: list[dict]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )


def completion_tokens_total(server: str) -> float:
    for line in httpx.get(f"{server}/metrics").text.splitlines():
        if line.startswith("node0_api_completion_tokens_total "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def server(smollm2_swarm, tmp_path_factory):
    root = tmp_path_factory.mktemp("pi")
    with api_server(smollm2_swarm.initial_peers, "--api-key", KEY, log=root / "api.log") as base:
        yield base


@pytest.fixture
def proxy(server):
    with RecordingProxy(server) as p:
        yield p


def pi_settings(proxy: RecordingProxy, agent_dir: Path) -> dict:
    """``node0 provider settings --harness pi``'s entry, its pi files written to agent_dir."""
    run = run_cli(
        ["node.cli", "provider", "settings", "--role", "polecat", "--harness", "pi"]
        + ["--api-base", f"{proxy.url}/v1", "--max-tokens", str(MAX_TOKENS)]
        + ["--write-pi-config", str(agent_dir)]
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def run_pi(args: list[str], tmp_path: Path, agent_dir: Path) -> subprocess.CompletedProcess:
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PI_CODING_AGENT_DIR": str(agent_dir),
        "PI_OFFLINE": "1",
        "NODE0_API_KEY": KEY,  # the entry's apiKey names this variable
    }
    return subprocess.run(
        [str(PI), *args, "--no-session", "--tools", TOOLS, "-p", PROMPT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_pi_answers_with_the_swarm(proxy, server, tmp_path):
    agent_dir = tmp_path / "agent"
    entry = pi_settings(proxy, agent_dir)
    agent = entry["agents"]["node0-polecat"]
    assert agent["command"] == "pi"
    before = completion_tokens_total(server)

    run = run_pi(agent["args"], tmp_path, agent_dir)

    assert run.returncode == 0, run.stderr
    chats = [x for x in proxy.exchanges if x["path"] == "/v1/chat/completions"]
    assert chats, f"pi sent no chat request; stdout {run.stdout!r} stderr {run.stderr!r}"
    for chat in chats:
        request = chat["request"]
        assert request["model"] == MODEL
        assert request["stream"] is True
        assert request["max_completion_tokens"] == MAX_TOKENS  # models.json's maxTokens
        assert {t["function"]["name"] for t in request["tools"]} == set(TOOLS.split(","))
        assert request["messages"][0]["role"] == "system"
        assert chat["status"] == 200, chat["body"][:2000]
    assert PROMPT in json.dumps(chats[0]["request"]["messages"][1])
    events = [sse_events(chat["body"]) for chat in chats]
    answer = streamed_text(events[-1])
    assert answer.strip(), events[-1]
    # what pi printed is the swarm's answer, as node0 api streamed it
    assert run.stdout.strip() == answer.strip()
    usage = [e["usage"] for stream in events for e in stream if e.get("usage")]
    assert len(usage) == len(chats)  # pi asked for usage; each stream ended with it
    assert completion_tokens_total(server) - before == sum(u["completion_tokens"] for u in usage)


def test_pi_without_max_tokens_is_refused_with_the_reason(proxy, tmp_path):
    """Why the entry sets maxTokens: pi asks for 16384 tokens otherwise, more than the window
    leaves, and the server's 400 says so (pi shows it with --mode json)."""
    agent_dir = tmp_path / "agent"
    entry = pi_settings(proxy, agent_dir)
    models = json.loads((agent_dir / "models.json").read_text())
    del models["providers"]["node0"]["models"][0]["maxTokens"]
    (agent_dir / "models.json").write_text(json.dumps(models))
    # pi takes the refusal for a context overflow and compacts (summarises with the model,
    # minutes on this CPU) before it retries: off, so the test sees the refusal at once
    settings = json.loads((agent_dir / "settings.json").read_text())
    settings["compaction"] = {**settings.get("compaction", {}), "enabled": False}
    (agent_dir / "settings.json").write_text(json.dumps(settings))

    run = run_pi(entry["agents"]["node0-polecat"]["args"] + ["--mode", "json"], tmp_path, agent_dir)

    first = next(x for x in proxy.exchanges if x["path"] == "/v1/chat/completions")
    assert first["request"]["max_completion_tokens"] == 16384
    assert first["status"] == 400
    error = json.loads(first["body"])["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "max_tokens")
    ends = [json.loads(line) for line in run.stdout.splitlines() if '"message_end"' in line]
    answers = [e["message"] for e in ends if e["message"]["role"] == "assistant"]
    assert answers[0]["stopReason"] == "error"
    assert "maximum context length is 8192 tokens" in answers[0]["errorMessage"]
