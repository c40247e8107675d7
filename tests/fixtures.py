"""The one module of shared test fixtures and helpers (registered by ``tests/conftest.py``).

Swarms are started with the same code as ``node0 swarm up`` (node.local_swarm), on loopback with
free ports, each daemon in its own process group; the fixture always stops them (SIGTERM, then
SIGKILL of the whole group). Tests import helpers from here, never from another test module.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

import base as _base  # noqa: F401  (gRPC fork handlers off before any test imports grpc)
from base.sampler import SamplingParams
from inference.generation import GenerationResult
from inference.swarm_client import SwarmClient

REPO = Path(__file__).resolve().parent.parent


# --- Environment, tiny and real models, local swarms of real daemons ---------------------------

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 (6 layers, q/k/v biases), the twin of ``tiny_model_dir``."""
    from models.tiny import build_tiny_qwen2

    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2", seed=0)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from models.assets import prepare_model

    return prepare_model("smollm2-135m")


@contextmanager
def local_swarm(
    tmp_path: Path, model: str, peers: list[tuple[str, list[tuple[int, int]] | str]], **daemon
) -> Iterator:
    """Start a swarm of real daemon processes; yields its SwarmState; always stops it.

    A peer's stages are a list of ``(start, end)`` or ``"auto"`` (automatic placement; give
    ``placement={...}`` among the daemon fields)."""
    from node.config import SwarmPreset
    from node.local_swarm import SwarmState, start_swarm, stop_peers

    preset = SwarmPreset.model_validate(
        {
            "model": model,
            "peers": [
                {
                    "name": name,
                    "stages": (
                        "auto" if stages == "auto" else [{"start": s, "end": e} for s, e in stages]
                    ),
                }
                for name, stages in peers
            ],
            "daemon": {
                "announce_period": 1.0,
                "announce_ttl": 4.0,
                "state_dir": str(tmp_path / "peer-state"),
                **daemon,
            },
        }
    )
    state_file = tmp_path / "swarm.json"
    state = start_swarm(preset, "test", runs_dir=tmp_path / "runs", state_file=state_file)
    try:
        yield state
    finally:
        stop_peers(SwarmState.load(state_file).peers if state_file.exists() else state.peers)


# --- Generation through a real swarm, references, CLI runs -------------------------------------

GREEDY = SamplingParams()


def swarm_generate(
    client: SwarmClient,
    prompts_ids: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    first_logits: bool = False,
    on_token=None,
    max_length: int | None = None,
) -> list[GenerationResult]:
    """Generate for each prompt in a fresh pipeline session (greedy by default, no EOS stop)."""
    tokenizer = client.load_tokenizer()

    async def run() -> list[GenerationResult]:
        return [
            await client.generate_once(
                tokenizer,
                ids,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                max_length=max_length,
                return_first_logits=first_logits,
                on_session_token=on_token,
                step_timeout=20.0,
            )
            for ids in prompts_ids
        ]

    return asyncio.run(run())


def make_adapter(model_dir, name: str, seed: int, out, *, scale: float = 0.6) -> None:
    """A PEFT adapter on disk that changes the model: lora_B drawn at ``scale``, not zero."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from lora import LoraSettings, deterministic_init_, save_peft_adapter

    settings = LoraSettings(rank=4, alpha=8.0, init_seed=seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), settings.to_peft(), adapter_name=name
    )
    deterministic_init_(model, name, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: B far from its zero init
        for param_name, param in model.named_parameters():
            if "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    save_peft_adapter(get_peft_model_state_dict(model, adapter_name=name), settings, out)


def chat_prompt_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    """Token ids of one-user-turn chat prompts, as the conversation engine formats them."""
    from dataload.prompt_format import encode_prompt, render

    return [
        encode_prompt(
            render([{"role": "user", "content": q}], mode="chat", tokenizer=tokenizer),
            tokenizer,
            mode="chat",
        )
        for q in questions
    ]


@torch.inference_mode()
def reference_generate(model, prompts_ids: list[list[int]], max_new_tokens: int):
    """transformers generate(do_sample=False) in one process, EOS disabled; + first logits."""
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids])
        tokens = model.generate(
            x,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        logits = model(x).logits[0, -1]
        out.append((tokens[0, len(ids) :].tolist(), logits))
    return out


def run_cli(args: list[str], *, stdin: str = "", timeout: float = 120, env=None):
    return subprocess.run(
        [sys.executable, "-m", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def kill_group(pid: int) -> None:
    """Crash a daemon the way a dead machine would: SIGKILL its whole process group."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- node0 api over a real swarm ---------------------------------------------------------------

SMOLLM2_3STAGE = [("stage0", [(0, 10)]), ("stage1", [(10, 20)]), ("stage2", [(20, 30)])]


def wait_until(predicate, timeout: float, what: str):
    """Poll ``predicate`` every half second until it returns something truthy; return that, or
    fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.5)


def wait_for_quiet_machine() -> None:
    """Wait while ``/tmp/node0-quiet`` exists (a benchmark asks the model tests to hold off)."""
    while os.path.exists("/tmp/node0-quiet"):
        time.sleep(5)


@contextmanager
def api_server(
    initial_peers: list[str], *args: str, log: Path, ready_timeout: float = 120
) -> Iterator[str]:
    """``node0 api`` (the real CLI, its own process group) on a free loopback port, once
    ``/health`` says 200; yields its base URL (``http://127.0.0.1:PORT``). Always stopped:
    SIGINT, then SIGKILL of the group (:func:`api.launch.api_process`)."""
    from api.launch import api_process

    with api_process(initial_peers, *args, log=log, cwd=REPO, ready_timeout=ready_timeout) as base:
        yield base


def active_sessions(client: SwarmClient) -> int:
    """Pipeline sessions open on the online daemons of ``client``'s swarm (Info RPC)."""
    import grpc

    from proto import node0_pb2, node0_pb2_grpc

    total = 0
    for endpoint in {r.endpoint for r in client.records() if r.state == "online"}:
        with grpc.insecure_channel(endpoint) as channel:
            info = node0_pb2_grpc.StageStub(channel).Info(node0_pb2.InfoRequest(), timeout=5)
            total += info.active_sessions
    return total


# --- Data loading: samples and SFT records -----------------------------------------------------

SAMPLES = REPO / "samples" / "sft"


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from dataload.tokenizer import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def corpus_build(tmp_path_factory) -> Path:
    """The corpus pipeline's output for the sample rig (its Python API, as `node0 corpus build`)."""
    from corpus import CorpusConfig, build_corpus

    result = build_corpus(
        CorpusConfig(), [REPO / "samples" / "gastown-rig"], tmp_path_factory.mktemp("corpus")
    )
    return result.run_dir


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_record(
    i: int, turns: list[tuple[str, str]], role: str = "polecat", task: str = "code-change"
) -> dict:
    return {
        "id": f"sft-{i:016x}",
        "role": role,
        "task": task,
        "turns": [{"speaker": s, "text": t} for s, t in turns],
        "quality_score": 1.0,
        "provenance": {
            "source_kind": "doc",
            "file": "x.md",
            "line": 1,
            "line_end": 1,
            "rig": "gastown",
            "role": role,
            "sha256": "0" * 64,
        },
    }


# --- Checkpoint gather: stage sources, logits, stage servers -----------------------------------

NUM_LAYERS = 6
STAGES = ((0, 2), (2, 5), (5, 6))
PROMPT_IDS = torch.tensor([[1, 5, 9, 33, 100, 7, 8, 200, 31]])


def stage_sources(model_dir: Path, stages=STAGES):
    """``[(manifest, state)]`` per stage, read from a local checkpoint."""
    from checkpoint_gather.sources import read_local_stage

    return [
        read_local_stage(
            model_dir, start, end, num_layers=NUM_LAYERS, source_id=f"peer-{i}/stage-{start}-{end}"
        )
        for i, (start, end) in enumerate(stages)
    ]


def load_config(model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def logits(model, ids=PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def greedy(model, ids=PROMPT_IDS, new_tokens: int = 16) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            ids,
            max_new_tokens=new_tokens,
            do_sample=False,
            attention_mask=torch.ones_like(ids),
            pad_token_id=2,
        )
    return out[0, ids.shape[1] :].tolist()


def load_causal_lm(path: Path, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, local_files_only=True, **kwargs
    ).eval()


@contextmanager
def stage_server(model_dir, spans=STAGES, *, peer_id="peer-a", dtype=None):
    """One in-process daemon (executor + Stage + StageWeights services) on a free port
    (stages in ``dtype``, default float32)."""
    from checkpoint_gather.weights_service import WeightsService
    from node.stage_service import StageService, start_grpc_server
    from pipeline_stages.executor import StageExecutor
    from pipeline_stages.loader import load_stage
    from pipeline_stages.sessions import SessionManager

    stages = {span: load_stage(model_dir, *span, dtype=dtype or torch.float32) for span in spans}
    executor = StageExecutor(
        str(model_dir),
        stages,
        SessionManager(max_sessions=2, max_cache_tokens=1024, idle_timeout=60),
    )
    weights = WeightsService(executor, peer_id=peer_id, max_message_bytes=1 << 20)
    server, port = start_grpc_server(
        StageService(executor, peer_id=peer_id, max_message_bytes=1 << 20),
        "127.0.0.1",
        0,
        max_workers=8,
        extra_servicers=(weights,),
    )
    try:
        yield executor, weights, f"127.0.0.1:{port}"
    finally:
        server.stop(0)
        executor.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[bool, Path]:
    """``{tied: checkpoint dir}`` for an untied and a tied tiny LLaMA."""
    from models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("gather-tiny")
    return {
        tied: build_tiny_llama(
            root / f"tiny-tied-{tied}", seed=3, num_layers=NUM_LAYERS, tie_word_embeddings=tied
        )
        for tied in (False, True)
    }


# --- Corpus ------------------------------------------------------------------------------------

SAMPLE_RIG = REPO / "samples" / "gastown-rig"


@pytest.fixture(scope="session")
def sample_rig() -> Path:
    return SAMPLE_RIG


@pytest.fixture(scope="session")
def scrubber():
    from corpus.scrub import Scrubber

    return Scrubber()


# --- RAG: small rigs, the indexed sample rig ---------------------------------------------------

SAMPLE_RIG = REPO / "samples" / "gastown-rig"


def write_beads(root: Path, beads: list[dict]) -> None:
    path = root / ".beads" / "issues.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(b) + "\n" for b in beads))


SMALL_BEADS = [
    {
        "id": "tr-a1",
        "title": "Retry gt mail send on transient errors",
        "status": "open",
        "priority": 1,
        "issue_type": "bug",
        "updated_at": "2025-03-01T10:00:00Z",
        "description": "Sending mail fails when the router restarts.",
    },
    {
        "id": "tr-b2",
        "title": "Witness nudges polecats idle for ten minutes",
        "status": "closed",
        "priority": 2,
        "issue_type": "feature",
        "updated_at": "2025-03-02T10:00:00Z",
        "description": "Patrol checks last activity.",
        "assignee": "testrig/witness",
    },
    {
        "id": "tr-c3",
        "title": "Deacon compacts issues.jsonl monthly",
        "status": "open",
        "priority": 3,
        "issue_type": "chore",
        "updated_at": "2025-03-03T10:00:00Z",
        "description": "Housekeeping.",
    },
]


def make_small_rig(root: Path, rig: str | None = None) -> Path:
    """A rig with 3 beads, two convention files, a formula and a session transcript."""
    root.mkdir(parents=True, exist_ok=True)
    write_beads(root, SMALL_BEADS)
    (root / "CLAUDE.md").write_text(
        "# Conventions\n\n## Git\nNever push to main; submit with gt done.\n\n"
        "## Mail\nReport blockers to the witness with gt mail send.\n"
    )
    (root / "polecats").mkdir()
    (root / "polecats" / "CLAUDE.md").write_text(
        "# Polecat\nWork one slung bead at a time, run go test, then gt done.\n"
    )
    formulas = root / ".beads" / "formulas"
    formulas.mkdir(parents=True)
    (formulas / "mol-witness-patrol.formula.toml").write_text(
        'formula = "mol-witness-patrol"\nversion = 1\ndescription = "Survey, nudge, escalate."\n'
        '[[steps]]\nid = "survey"\ntitle = "Survey polecats"\ndescription = "gt polecat list"\n'
    )
    (root / "transcripts").mkdir()
    record = {
        "schema": "gastown.transcript/1",
        "session_id": "ses-1",
        "rig": rig or root.name,
        "role": "polecat",
        "bead_id": "tr-a1",
        "outcome": "success",
        "ended_at": "2025-03-01T12:00:00Z",
        "turns": [
            {"speaker": "user", "text": "Your hook has tr-a1."},
            {"speaker": "assistant", "text": "Added retry with backoff; tests pass."},
        ],
    }
    (root / "transcripts" / "day1.jsonl").write_text(json.dumps(record) + "\n")
    return root


os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def small_rig(tmp_path: Path) -> Path:
    return make_small_rig(tmp_path / "testrig")


@pytest.fixture(scope="session")
def embedder():
    from rag.embedding import MiniLMEmbeddingFunction

    return MiniLMEmbeddingFunction()


@pytest.fixture(scope="session")
def sample_store_dir(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """The sample rig indexed once per test session (a copy, so the original is never touched)."""
    from rag.indexer import index_rig
    from rag.store import RagStore

    if not SAMPLE_RIG.is_dir():
        pytest.fail(f"sample rig missing at {SAMPLE_RIG}")
    base = tmp_path_factory.mktemp("sample")
    rig = shutil.copytree(SAMPLE_RIG, base / "gastown-rig")
    store_dir = base / "store"
    with RagStore(store_dir, embedder=embedder, writable=True) as store:
        index_rig(store, rig, rig="gastown")
    return store_dir


@pytest.fixture
def sample_store(sample_store_dir: Path, embedder):
    from rag.store import RagStore

    with RagStore(sample_store_dir, embedder=embedder) as store:
        yield store


# --- Training over a swarm ------------------------------------------------------------
SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
STEPS = 8
"""Steps of a parity run: enough for the curves to part if any step differed (each step's loss
and the final adapter are compared at 1e-4), few enough for the default tier."""


def train_config(model_dir: Path, **update) -> dict:
    raw = {
        "model": str(model_dir),
        "adapter": "eq",
        "lora": {"rank": 4, "alpha": 8, "init_seed": 7},
        "learning_rate": 5e-3,
        "max_grad_norm": 0.0,
        "steps": STEPS,
        "checkpoint_every": 5,
        "micro_batch_size": 2,
        "data": {
            "train": [str(REPO / "samples/sft/gastown_conventions.train.jsonl")],
            "heldout": [str(REPO / "samples/sft/gastown_conventions.heldout.jsonl")],
            "prompt_mode": "completion",
            "max_length": 128,
            "batch_size": 4,
            "seed": 3,
        },
    }
    raw.update(update)
    return raw


def run_train(
    tmp_path: Path, swarm_file: Path, config: dict, *extra: str, expect: int = 0
) -> tuple[subprocess.CompletedProcess, dict | None]:
    path = tmp_path / f"train-{len(list(tmp_path.glob('train-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "train",
            "--config",
            str(path),
            "--swarm-file",
            str(swarm_file),
            "--runs-dir",
            str(tmp_path / "runs"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=REPO,
    )
    assert proc.returncode == expect, proc.stderr[-3000:]
    if expect:
        return proc, None
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    record = json.loads((Path(summary["run_dir"]) / "run_record.json").read_text())
    return proc, record


def peft_train_reference(
    model_dir: Path, config: dict, *, dtype: torch.dtype = torch.float32
) -> tuple[list[float], dict]:
    """Single-process PEFT on the whole model (base loaded in ``dtype``; PEFT keeps the adapters
    in float32) with ``config``'s data order, seed and hyperparameters: per-step losses and the
    final adapter (PEFT file keys)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dataload import build_loaders
    from dataload.losses import cross_entropy_sum
    from lora.stage_adapters import adapter_state_dict, deterministic_init_
    from training.config import TrainConfig
    from training.trainer import microbatches

    cfg = TrainConfig.model_validate(config)
    loaders = build_loaders(cfg.data, model_dir=model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = get_peft_model(base, cfg.lora.to_peft(), adapter_name=cfg.adapter)
    deterministic_init_(model, cfg.adapter, cfg.lora.init_seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    per_epoch = loaders.train.num_batches(0)
    losses = []
    for step in range(cfg.steps):
        batch = loaders.train.batch_at(loaders.train.position(step // per_epoch, step % per_epoch))
        mbs = microbatches(batch, cfg.micro_batch_size)
        total = sum(mb.counted_tokens for mb in mbs)
        loss_sum = 0.0
        for mb in mbs:
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            part, _ = cross_entropy_sum(logits, mb.labels)
            (part / total).backward()
            loss_sum += float(part.detach())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum / total)
    return losses, adapter_state_dict(model, cfg.adapter)


def stage_adapter_union(state_dir: Path, run_id: str, adapter: str = "eq") -> dict:
    """The union of the adapter checkpoints every stage of ``run_id`` wrote under ``state_dir``."""
    union = {}
    for path in sorted(state_dir.glob(f"*/checkpoints/{run_id}/{adapter}-L*.pt")):
        union.update(torch.load(path, weights_only=True)["adapter_state"])
    return union


def max_relative(a: dict, b: dict) -> float:
    """Largest per-tensor max |a - b| / max |b| over two state dicts with the same keys."""
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in b)


# --- A task adapter that calls tools -----------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER = [("Paris", 21, "sunny"), ("Tokyo", 14, "rainy"), ("Oslo", 3, "cloudy")]


def weather_exchange(city: str, temperature: int, sky: str, call_id: str = "call_1"):
    """``(question, call, history)``: a weather question, the call that answers it, and the
    history through the tool's result (OpenAI-style messages)."""
    from inference.tool_calls import ToolCall

    question = [{"role": "user", "content": f"What is the weather in {city}?"}]
    call = ToolCall(call_id, "get_weather", json.dumps({"city": city}))
    result = json.dumps({"temperature": temperature, "sky": sky})
    history = question + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]
    return question, call, history


def weather_examples() -> list[tuple[list[dict], str]]:
    """``train_tool_adapter``'s default data: per city, the call a weather question gets, and
    the answer after the tool's result."""
    from inference.tool_calls import FORMATS

    fmt_call = FORMATS["hermes"].render_call
    examples = []
    for city, temperature, sky in WEATHER:
        question, call, history = weather_exchange(city, temperature, sky)
        examples.append((question, fmt_call(call)))
        examples.append((history, f"It is {temperature} degrees and {sky} in {city}."))
    return examples


def train_tool_adapter(
    model_dir: Path,
    name: str,
    out: Path,
    *,
    steps: int = 24,
    examples: list[tuple[list[dict], str]] | None = None,
    tools=None,
):
    """Single-process PEFT: an adapter trained on ``examples`` — (OpenAI-style messages, the
    reply: text or a call in the family's syntax) — rendered with ``tools`` offered (ToolSpecs).
    By default it calls ``get_weather`` for weather questions and answers from the tool's
    result. Saved to ``out``; returns the PEFT model (eval mode) for references."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataload.prompt_format import encode_prompt, render
    from inference.tool_calls import FORMATS, ToolSpec, with_tools
    from lora import LoraSettings, deterministic_init_, save_peft_adapter

    fmt = FORMATS["hermes"]
    if tools is None:
        tools = [ToolSpec(**{**WEATHER_TOOL["function"]})]
    if examples is None:
        examples = weather_examples()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = []
    for messages, answer in examples:
        text = render(with_tools(messages, fmt, tools), mode="chat", tokenizer=tokenizer)
        prompt = encode_prompt(text, tokenizer, mode="chat")
        reply = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False).input_ids
        data.append((prompt, reply))
    torch.manual_seed(0)
    settings = LoraSettings(rank=8, alpha=16.0, init_seed=0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), settings.to_peft(), adapter_name=name
    )
    deterministic_init_(model, name, 0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(steps):
        prompt, reply = data[step % len(data)]
        ids = torch.tensor([prompt + reply])
        labels = torch.tensor([[-100] * len(prompt) + reply])
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    save_peft_adapter(get_peft_model_state_dict(model, adapter_name=name), settings, out)
    return model


# --- The agent tool loop with scripted model replies -------------------------------------------


class ScriptedModel:
    """A tool-loop model (``inference.tool_loop.Model``) that answers with scripted replies, in
    order, streamed a few characters at a time; ``prompts`` holds every message list it got.
    A reply may be a callable of the messages (e.g. one that sleeps past a time limit)."""

    def __init__(self, replies: list, *, chunk: int = 3) -> None:
        self.replies = list(replies)
        self.prompts: list[list[dict]] = []
        self.chunk = chunk

    async def __call__(self, messages, on_text):
        from types import SimpleNamespace

        self.prompts.append([dict(m) for m in messages])
        reply = self.replies.pop(0)
        if callable(reply):
            reply = await reply(messages)
        for at in range(0, len(reply), self.chunk):
            on_text(reply[at : at + self.chunk])
        return SimpleNamespace(
            text=reply,
            finish_reason="eos",
            token_ids=list(range(len(reply) // 4 + 1)),
            prompt_tokens=sum(len(m["content"]) for m in messages) // 4,
            reused_tokens=0,
            time_to_first_token=0.0,
        )


def bash_call(command: str) -> str:
    """A reply that calls ``bash`` with ``command`` in the hermes syntax."""
    from inference.tool_calls import FORMATS, ToolCall

    return FORMATS["hermes"].render_call(ToolCall.new("bash", {"command": command}))


NOTES = ["deploy on friday", "fix the parser first", "ship version two"]
NOTES_QUESTION = "What do the notes say?"


def notes_examples() -> list[tuple[list[dict], str]]:
    """Per note: the question gets ``cat notes.txt`` (the ``bash`` tool); after the tool's
    result (as the tool loop shows it to the model), the answer repeats the note."""
    from inference.tool_calls import FORMATS, ToolCall
    from inference.tools import ToolOutcome

    fmt = FORMATS["hermes"]
    call = ToolCall("call_1", "bash", json.dumps({"command": "cat notes.txt"}))
    question = [{"role": "user", "content": NOTES_QUESTION}]
    examples = []
    for note in NOTES:
        result = ToolOutcome(f"{note}\n").model_text()
        history = question + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        examples += [(question, fmt.render_call(call)), (history, f"The notes say: {note}.")]
    return examples


# --- One SmolLM2 swarm for the API and tool-loop tests -----------------------------------------

SHARED_ADAPTERS = ("tuned", "other", "weather", "notes")
"""Adapters of :func:`smollm2_swarm`: ``tuned`` and ``other`` change the model a little
(:func:`make_adapter` seeds 1 and 2, scale 0.02); ``weather`` calls ``get_weather`` and
``notes`` calls ``bash`` to ``cat notes.txt`` (trained here, :func:`train_tool_adapter`)."""


@pytest.fixture(scope="session")
def tool_adapters(smollm2_dir, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """name -> (PEFT adapter directory, the trained PEFT model for references)."""
    from inference.tools import BASH

    root = tmp_path_factory.mktemp("tool-adapters")
    return {
        "weather": (root / "weather", train_tool_adapter(smollm2_dir, "weather", root / "weather")),
        "notes": (
            root / "notes",
            train_tool_adapter(
                smollm2_dir,
                "notes",
                root / "notes",
                steps=30,  # 20 steps over two notes were too few for the call's syntax
                examples=notes_examples(),
                tools=[BASH],
            ),
        ),
    }


@pytest.fixture(scope="session")
def smollm2_swarm(smollm2_dir, tool_adapters, tmp_path_factory):
    """A 3-stage SmolLM2 swarm serving :data:`SHARED_ADAPTERS`, shared by the test modules
    that leave it as they found it (nothing in them stops a stage: those start their own)."""
    wait_for_quiet_machine()
    root = tmp_path_factory.mktemp("smollm2-swarm")
    make_adapter(smollm2_dir, "tuned", 1, root / "tuned", scale=0.02)
    make_adapter(smollm2_dir, "other", 2, root / "other", scale=0.02)
    adapters = {name: str(root / name) for name in ("tuned", "other")}
    adapters |= {name: str(path) for name, (path, _) in tool_adapters.items()}
    with local_swarm(root / "swarm", "smollm2-135m", SMOLLM2_3STAGE, adapters=adapters) as state:
        yield state


# --- DPO: the single-process reference -----------------------------------------------------------


def dpo_train_config(model_dir: Path, **update) -> dict:
    """A small DPO run on the Gas Town preference pairs (``samples/dpo``)."""
    raw = train_config(model_dir, steps=10, **update)
    raw["data"] = {
        **raw["data"],
        "kind": "dpo",
        "train": [str(REPO / "samples/dpo/gastown_preferences.train.jsonl")],
        "heldout": [str(REPO / "samples/dpo/gastown_preferences.heldout.jsonl")],
        "max_length": 160,
    }
    raw.setdefault("dpo", {"beta": 0.1})
    return raw


def peft_dpo_reference(model_dir: Path, config: dict) -> tuple[list[float], list[dict], dict]:
    """Single-process DPO with PEFT on the whole model and the TRL-matching loss
    (:func:`dataload.losses.dpo_loss`; the reference is the same model under
    ``disable_adapter()``), with ``config``'s pairs, order, seed, β and micro-batches: per-step
    losses, per-step reward metrics and the final adapter (PEFT file keys)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dataload import build_loaders
    from dataload.losses import dpo_loss, dpo_reward_metrics, sequence_logprobs
    from lora.stage_adapters import adapter_state_dict, deterministic_init_
    from training.config import TrainConfig
    from training.dpo_step import pair_microbatches

    cfg = TrainConfig.model_validate(config)
    loaders = build_loaders(cfg.data, model_dir=model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, cfg.lora.to_peft(), adapter_name=cfg.adapter)
    deterministic_init_(model, cfg.adapter, cfg.lora.init_seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    per_epoch = loaders.train.num_batches(0)
    losses, metrics = [], []
    beta, smoothing = cfg.dpo.beta, cfg.dpo.label_smoothing
    for step in range(cfg.steps):
        batch = loaders.train.batch_at(loaders.train.position(step // per_epoch, step % per_epoch))
        mbs = pair_microbatches(batch, cfg.micro_batch_size)
        total = sum(mb.pairs for mb in mbs)
        loss_sum, logps = 0.0, []
        for mb in mbs:
            rows, k = mb.rows, mb.pairs
            model.eval()
            with torch.no_grad(), model.disable_adapter():
                ref = sequence_logprobs(
                    model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits,
                    rows.labels,
                )
            model.train()
            policy = sequence_logprobs(
                model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits,
                rows.labels,
            )
            part = dpo_loss(
                policy[:k],
                policy[k:],
                ref[:k],
                ref[k:],
                beta,
                label_smoothing=smoothing,
                reduction="sum",
            )
            (part / total).backward()
            loss_sum += float(part.detach())
            logps.append((policy.detach(), ref, k))
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss_sum / total)
        metrics.append(
            dpo_reward_metrics(
                torch.cat([p[:k] for p, _, k in logps]),
                torch.cat([p[k:] for p, _, k in logps]),
                torch.cat([r[:k] for _, r, k in logps]),
                torch.cat([r[k:] for _, r, k in logps]),
                beta=beta,
            )
        )
    return losses, metrics, adapter_state_dict(model, cfg.adapter)


class StepClock:
    """A clock that advances only when a test says so (``clock.now += seconds``)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
