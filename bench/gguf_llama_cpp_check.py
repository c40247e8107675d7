"""The node0 GGUF export of SmolLM2-135M-Instruct, read by llama.cpp (``llama-cpp-python``):
greedy output for 32 tokens on 5 chat prompts against transformers' greedy output of the
prepared Hugging Face model (fp32), which the swarm reproduces (tests/gather/
test_gather_swarm_real.py).

Two interpreters, each on its own side:

- the project's (``.venv/bin/python -m bench.gguf_llama_cpp_check``): renders the 5 chat
  prompts (``dataload.prompt_format.render`` / ``encode_prompt``, chat mode), runs transformers
  greedy (``do_sample=False``, EOS disabled) and keeps the tokens and the first-step logits,
  exports GGUF f32 and f16 with the project's writer
  (:func:`checkpoint_gather.gguf_export.export_gguf`), writes ``reference.json``; then runs this
  same file under ``--llama-python`` and compares;
- the llama.cpp one (``--llama-side DIR``, needs only ``llama_cpp`` and numpy): loads each GGUF
  with ``llama_cpp.Llama`` (n_ctx 512, one thread, f32 KV cache unless told), feeds the exact
  prompt token ids (tokenization plays no part), and takes the argmax of llama.cpp's logits 32
  times — greedy with no sampler in between. It also tokenizes the rendered prompt text with the
  GGUF's own tokenizer, to report whether the embedded ``tokenizer.*`` fields agree with the HF
  tokenizer.

The last line is JSON: per GGUF type the identical prompts, token agreement, first divergence
per prompt and the largest first-step logit difference::

    nice -n 10 .venv/bin/python -m bench.gguf_llama_cpp_check \
        --llama-python /work/lcp-venv/bin/python [--work DIR] [--kv f32,f16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m"
PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain in one sentence what a polecat is.",
    "Tell me a short story that starts in a small village.",
    "What are the three primary colors?",
]
NEW_TOKENS = 32
GGUF_TYPES = ("f32", "f16")
GGML_TYPE = {"f32": 0, "f16": 1}  # ggml_type values for the KV cache


# --- llama.cpp side (its own venv: stdlib, numpy, llama_cpp only) ---------------------------


def llama_side(work: Path, kv_types: list[str], threads: int) -> dict:
    import llama_cpp
    import numpy as np

    ref = json.loads((work / "reference.json").read_text())
    out: dict = {"llama_cpp_python": llama_cpp.__version__, "runs": {}}
    for out_type, path in ref["gguf"].items():
        for kv in kv_types:
            started = time.perf_counter()
            llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=512,
                n_batch=512,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                flash_attn=False,
                type_k=GGML_TYPE[kv],
                type_v=GGML_TYPE[kv],
                seed=0,
                verbose=False,
            )
            tokens, first_logits, tokenized = [], [], []
            for ids, text in zip(ref["prompt_ids"], ref["prompt_texts"], strict=True):
                tokenized.append(llm.tokenize(text.encode(), add_bos=False, special=True) == ids)
                llm.reset()
                llm.eval(ids)
                new = []
                for step in range(ref["new_tokens"]):
                    logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                    if step == 0:
                        first_logits.append(logits.copy())
                    new.append(int(np.argmax(logits)))
                    llm.eval([new[-1]])
                tokens.append(new)
            name = f"{out_type}-kv{kv}"
            np.save(work / f"llama-{name}-first-logits.npy", np.stack(first_logits))
            out["runs"][name] = {
                "gguf": out_type,
                "kv_cache": kv,
                "tokens": tokens,
                "tokenizer_matches_hf": tokenized,
                "seconds": time.perf_counter() - started,
            }
            del llm
    return out


# --- project side ---------------------------------------------------------------------------


def prepare(work: Path) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from checkpoint_gather.gguf_export import export_gguf
    from checkpoint_gather.gguf_tokenizer import tokenizer_fields
    from dataload.prompt_format import encode_prompt, render
    from models.assets import prepare_model

    model_dir = prepare_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [
        render([{"role": "user", "content": p}], mode="chat", tokenizer=tokenizer) for p in PROMPTS
    ]
    prompt_ids = [encode_prompt(t, tokenizer, mode="chat") for t in texts]
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, local_files_only=True
    ).eval()
    tokens, first = [], []
    with torch.no_grad():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            out = model.generate(
                x,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            tokens.append(out[0, len(ids) :].tolist())
            first.append(model(x).logits[0, -1].numpy())
    np.save(work / "hf-first-logits.npy", np.stack(first))
    fields = tokenizer_fields(
        model=MODEL, tokenizer_dir=model_dir, vocab_size=model.config.vocab_size
    )
    state = model.state_dict()
    gguf = {
        t: str(
            export_gguf(
                work / f"{MODEL}-{t}.gguf",
                model.config,
                state,
                tokenizer=fields,
                out_type=t,
                name=MODEL,
            )
        )
        for t in GGUF_TYPES
    }
    ref = {
        "model": MODEL,
        "prompts": PROMPTS,
        "prompt_texts": texts,
        "prompt_ids": prompt_ids,
        "new_tokens": NEW_TOKENS,
        "hf_tokens": tokens,
        "hf_texts": [tokenizer.decode(t) for t in tokens],
        "gguf": gguf,
    }
    (work / "reference.json").write_text(json.dumps(ref, indent=1))
    return ref


def compare(work: Path, ref: dict, llama: dict) -> dict:
    import numpy as np

    hf_first = np.load(work / "hf-first-logits.npy")
    n = len(ref["prompts"]) * ref["new_tokens"]
    summary: dict = {
        "llama_cpp_python": llama["llama_cpp_python"],
        "prompts": len(ref["prompts"]),
        "new_tokens": ref["new_tokens"],
        "runs": {},
    }
    for name, run in llama["runs"].items():
        first_div = [
            next((i for i, (a, b) in enumerate(zip(t, h, strict=True)) if a != b), None)
            for t, h in zip(run["tokens"], ref["hf_tokens"], strict=True)
        ]
        agree = sum(
            a == b
            for t, h in zip(run["tokens"], ref["hf_tokens"], strict=True)
            for a, b in zip(t, h, strict=True)
        )
        first = np.load(work / f"llama-{name}-first-logits.npy")
        summary["runs"][name] = {
            "identical_prompts": sum(d is None for d in first_div),
            "token_agreement": round(agree / n, 4),
            "first_divergence": first_div,
            "max_abs_first_logit_diff": float(np.abs(first - hf_first).max()),
            "first_step_argmax_equal": int((first.argmax(1) == hf_first.argmax(1)).sum()),
            "tokenizer_matches_hf": sum(run["tokenizer_matches_hf"]),
            "seconds": round(run["seconds"], 1),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llama-python",
        default="/work/lcp-venv/bin/python",
        help="an interpreter where `import llama_cpp` works",
    )
    parser.add_argument("--work", type=Path, help="keep the GGUFs and JSON here (default: temp)")
    parser.add_argument(
        "--kv",
        default="f32,f16",
        help="llama.cpp KV cache types to run, comma-separated (f32 first)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--llama-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    kv_types = [k for k in args.kv.split(",") if k]
    if args.llama_side:
        print(json.dumps(llama_side(args.llama_side, kv_types, args.threads)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="node0-gguf-llama-cpp-"))
    work.mkdir(parents=True, exist_ok=True)
    ref = prepare(work)
    print(f"reference and GGUFs in {work}", file=sys.stderr)
    done = subprocess.run(
        [
            args.llama_python,
            str(Path(__file__).resolve()),
            "--llama-side",
            str(work),
            "--kv",
            args.kv,
            "--threads",
            str(args.threads),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp side failed ({args.llama_python}):\n{done.stderr[-3000:]}")
    llama = json.loads(done.stdout.strip().splitlines()[-1])
    (work / "llama.json").write_text(json.dumps(llama, indent=1))
    print(json.dumps(compare(work, ref, llama)))


if __name__ == "__main__":
    main()
