"""The real model (SmolLM2-135M-Instruct) through a 3-stage swarm of real daemon processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from base.sampler import SamplingParams
from inference.swarm_client import SwarmClient
from tests.fixtures import (
    SMOLLM2_3STAGE,
    chat_prompt_ids,
    kill_group,
    local_swarm,
    reference_generate,
    swarm_generate,
)

# the session's shared swarm (smollm2_swarm: tool adapters trained first) may start in this
# module's setup: minutes on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL = "smollm2-135m"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three prime numbers.",
    "How do I create a new branch with git?",
    "Translate 'good morning' into Spanish.",
    "What does a CPU do?",
    "Give me a tip for writing clean Python code.",
]
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return chat_prompt_ids(tokenizer, QUESTIONS)


@pytest.fixture(scope="module")
def swarm(smollm2_swarm):
    """The session's shared 3-stage swarm (its adapters change nothing without a request)."""
    return smollm2_swarm


@pytest.fixture(scope="module")
def client(swarm):
    c = SwarmClient(MODEL, swarm.initial_peers)
    c.wait_for_route()
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(smollm2_dir, prompts):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return reference_generate(model, prompts, NEW_TOKENS)


def test_swarm_greedy_equals_transformers_token_for_token(client, prompts, reference, tokenizer):
    results = swarm_generate(client, prompts, max_new_tokens=NEW_TOKENS, first_logits=True)
    worst = 0.0
    for question, result, (tokens, logits) in zip(QUESTIONS, results, reference, strict=True):
        diff = (result.first_logits - logits).abs().max().item()
        worst = max(worst, diff)
        assert result.token_ids == tokens, (
            question,
            tokenizer.decode(result.token_ids),
            tokenizer.decode(tokens),
        )
    print(
        f"\n{len(prompts)} prompts x {NEW_TOKENS} tokens identical; "
        f"first-step logits max abs diff {worst:.2e}"
    )
    assert worst < 1e-3


def test_same_seed_gives_same_text_twice(client, prompts, tokenizer):
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=2026)
    first = swarm_generate(client, prompts[:2], max_new_tokens=24, sampling=params)
    second = swarm_generate(client, prompts[:2], max_new_tokens=24, sampling=params)
    texts = [tokenizer.decode(r.token_ids) for r in first]
    assert texts == [tokenizer.decode(r.token_ids) for r in second]


@pytest.mark.slow
def test_failover_mid_generation_keeps_greedy_output(smollm2_dir, prompts, reference, tmp_path):
    peers = [
        ("stage0", [(0, 10)]),
        ("stage1a", [(10, 20)]),
        ("stage1b", [(10, 20)]),
        ("stage2", [(20, 30)]),
    ]
    with local_swarm(tmp_path, MODEL, peers) as state:
        c = SwarmClient(MODEL, state.initial_peers)
        try:
            c.wait_for_route()
            time.sleep(1.5)
            killed, seen = [], []

            def on_token(session):
                seen.append((session.hops[1].record.endpoint, session.failovers))
                if len(seen) == 20 and not killed:
                    peer_id = session.hops[1].record.peer_id
                    victim = next(p for p in state.peers if peer_id in open(p.maddr_file).read())
                    kill_group(victim.pid)
                    killed.append(session.hops[1].record.endpoint)
                    # let the client see the stream end before its next write: the failover
                    # must work on that path too (the tiny-model test covers the other)
                    time.sleep(1.0)

            (result,) = swarm_generate(c, prompts[:1], max_new_tokens=NEW_TOKENS, on_token=on_token)
        finally:
            c.close()
    assert killed and seen[-1][1] == 1 and seen[-1][0] != killed[0]
    assert result.token_ids == reference[0][0]


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


FULL_MODEL_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.inference_mode():
    m.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def _served_peak_rss_mb(root, split, prompt) -> dict[str, float]:
    """Peak RSS of each daemon of a plain swarm (no adapters) after it served ``prompt``."""
    with local_swarm(root, MODEL, split) as plain:
        client = SwarmClient(MODEL, plain.initial_peers)
        try:
            client.wait_for_route()
            swarm_generate(client, [prompt], max_new_tokens=8)
        finally:
            client.close()
        return {p.name: _peak_rss_mb(p.pid) for p in plain.peers}


def test_stage_process_memory_vs_whole_model_process(prompts, smollm2_dir, tmp_path):
    # Like against like: the same daemon holding a third of the layers against it holding them
    # all (the daemon's own share, DHT, gRPC, throughput bench, is about 450 MB of either).
    # Plain swarms of their own: the shared one holds four adapters and served the API tests.
    stage_mb = _served_peak_rss_mb(tmp_path / "split", SMOLLM2_3STAGE, prompts[0])
    whole_mb = _served_peak_rss_mb(tmp_path / "whole", [("whole", [(0, 30)])], prompts[0])["whole"]
    out = subprocess.run(
        [sys.executable, "-c", FULL_MODEL_SCRIPT, str(smollm2_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    transformers_mb = int(out.stdout.split()[-1]) / 1024
    print(
        "\npeak RSS per stage process (MB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in stage_mb.items())
        + f"; one daemon holding the whole model: {whole_mb:.0f} MB"
        + f"; the whole model in transformers alone: {transformers_mb:.0f} MB"
    )
    assert max(stage_mb.values()) < whole_mb


def test_tmux_polecat_session_with_rag_leaves_transcript_corpus_accepts(swarm, tmp_path):
    import json
    import shutil

    from tests.fixtures import REPO, run_cli

    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed")
    store = tmp_path / "rag"
    index = run_cli(
        ["node.cli", "rag", "index", "--rig", "samples/gastown-rig", "--store", str(store)],
        timeout=600,
    )
    assert index.returncode == 0, index.stderr
    rig = tmp_path / "rig"  # the sample rig plus this session's transcript
    shutil.copytree(REPO / "samples/gastown-rig", rig)
    transcript = rig / "transcripts" / "node0.jsonl"
    name = f"node0smol{int(time.time() * 1000) % 10**8}"
    command = (
        f"cd {REPO} && {sys.executable} -m inference.agent_client --model {MODEL} "
        f"--initial-peers {' '.join(swarm.initial_peers)} --role polecat --rig gastown "
        f"--rag {store} --bead gt-gtak --transcript {transcript} --max-new-tokens 40; "
        f"echo EXIT=$?; sleep 120"
    )
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50", command], check=True
    )

    def pane() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True
        ).stdout

    def wait_for(condition, seconds):
        deadline = time.monotonic() + seconds
        while not condition(text := pane()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return text

    def prompts(text):
        return sum(line.startswith(">") for line in text.splitlines())

    try:
        wait_for(lambda t: prompts(t) >= 1, 180)
        subprocess.run(
            [
                "tmux",
                "send-keys",
                "-t",
                name,
                "How should I mark the bead on my hook as done?",
                "Enter",
            ],
            check=True,
        )
        answer = wait_for(lambda t: prompts(t) >= 2, 180)
        assert prompts(answer) >= 2 and answer.splitlines()[1].strip(), answer
        subprocess.run(["tmux", "send-keys", "-t", name, "C-d"], check=True)
        assert "EXIT=0" in wait_for(lambda t: "EXIT=" in t, 60), pane()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    record = json.loads(transcript.read_text().splitlines()[-1])
    assert record["role"] == "polecat" and record["turns"][-1]["speaker"] == "assistant"
    build = run_cli(
        ["node.cli", "corpus", "build", "--rig", str(rig), "--out", str(tmp_path / "corpus")],
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    manifest = json.loads(next((tmp_path / "corpus").glob("*/manifest.json")).read_text())
    counts = manifest["reconciliation"]["by_source"]["gastown:transcripts/node0.jsonl"]
    print(f"\ncorpus build of the session transcript: {counts}")
    assert counts["read"] == 1 and counts["accepted"] == 1
