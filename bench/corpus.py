"""Benchmark: corpus scrub + build throughput vs. detect-secrets alone, and peak memory.

Generates a synthetic rig of at least ``--mb`` MB (session transcripts, beads, docs, formulas,
with planted fake secrets in ~2% of sessions), then measures, each in a fresh child process:

1. ``node0 corpus build`` on the whole rig (wall time, CPU time, peak RSS);
2. the scrubber alone (all layers) over the same text;
3. detect-secrets alone — its own file scanner (``scan_file``, default plugins and filters) —
   on the first ``--ds-mb`` MB of the same transcript files. Its per-line cost does not depend
   on corpus size, so a slice gives its MB/s without a 15-minute run.

Run:  nice -n 10 .venv/bin/python bench/corpus.py --mb 50
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AN = string.ascii_letters + string.digits
ROLES = ["polecat", "mayor", "witness", "deacon", "boot", "crew"]
VERBS = ["fix", "add", "refactor", "document", "test", "review", "plan", "split", "migrate"]
NOUNS = [
    "mail router",
    "convoy loader",
    "merge queue",
    "witness patrol",
    "bead importer",
    "formula parser",
    "hook runner",
    "deacon scheduler",
    "polecat pool",
    "rig config",
]
FILES = [
    "internal/mail/send.go",
    "internal/convoy/load.go",
    "internal/refinery/queue.go",
    "cmd/gt/polecat.go",
    "internal/beads/import.go",
    "internal/formula/parse.go",
]


def _secret(rng: random.Random) -> str:
    return rng.choice(
        [
            "ghp_" + "".join(rng.choice(AN) for _ in range(36)),
            "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
            "postgres://app:" + "".join(rng.choice(AN) for _ in range(12)) + "@10.1.2.3/db",
            "sk-ant-api03-" + "".join(rng.choice(AN) for _ in range(90)) + "AA",
            "dev" + str(rng.randint(1, 999)) + "@gastown-dev.io",
        ]
    )


def _session(rng: random.Random, i: int) -> dict:
    role = rng.choice(ROLES)
    bead = f"gt-{i:06x}"
    noun, verb, path = rng.choice(NOUNS), rng.choice(VERBS), rng.choice(FILES)
    turns = [
        {"speaker": "system", "text": f"You are a {role} in the gastown rig."},
        {"speaker": "user", "text": f"Your hook has {bead}: {verb} the {noun} ({i})."},
    ]
    for step in range(rng.randint(4, 10)):
        n = rng.randint(1, 10_000)
        turns.append(
            {
                "speaker": "assistant",
                "text": rng.choice(
                    [
                        f"$ bd show {bead}\n$ bd update {bead} --status in_progress",
                        f"Looking at {path}: the {noun} retries {n % 7} times before giving up; "
                        f"I will change the backoff to {n % 900} ms and add a test for case {n}.",
                        f"$ go test ./{path.rsplit('/', 1)[0]}/... "
                        f"-run Test{noun.title().replace(' ', '')}{n}",
                        f'$ gt mail send gastown/witness -s "{bead} step {step}" '
                        f'-m "progress on {noun}"',
                    ]
                ),
            }
        )
        out = rng.choice(
            [
                f"ok  \tgithub.com/steveyegge/gastown/{path.rsplit('/', 1)[0]}\t0.{n % 999}s",
                f"--- FAIL: Test{n} ({n % 5}.{n % 100:02d}s)\n"
                f"    {path}:{n % 300}: want {n} got {n + 1}",
                f"Updated 1 issue. {bead} now in_progress (priority {n % 5}).",
                "\n".join(
                    f"{path}:{(n + k) % 400}: func step{k}(ctx context.Context) error {{"
                    for k in range(rng.randint(3, 12))
                ),
            ]
        )
        if rng.random() < 0.02:
            out += f"\nconfig: {_secret(rng)}"
        turns.append({"speaker": "tool", "text": out})
    turns.append(
        {"speaker": "assistant", "text": f"$ gt done\n$ bd close {bead} --reason done {i}"}
    )
    return {
        "schema": "gastown.transcript/1",
        "session_id": f"ses-{i:07d}",
        "rig": "benchrig",
        "role": role,
        "bead_id": bead,
        "outcome": rng.choice(["success"] * 4 + ["failure"]),
        "failure_mode": "broke_tests",
        "ended_at": f"2026-03-{1 + i % 28:02d}T00:00:00Z",
        "turns": turns,
    }


def generate(root: Path, mb: float, seed: int = 7) -> int:
    """Write the synthetic rig; returns its size in bytes."""
    rng = random.Random(seed)
    (root / "transcripts").mkdir(parents=True)
    (root / ".beads").mkdir()
    (root / "rig.toml").write_text('[rig]\nname = "benchrig"\nbead_prefix = "gt"\n')
    shutil_src = REPO / "samples" / "gastown-rig"
    for rel in ("CLAUDE.md", "AGENTS.md"):
        (root / rel).write_bytes((shutil_src / rel).read_bytes())
    target = int(mb * 1e6)
    total, i, part = 0, 0, 0
    while total < target:
        lines = [json.dumps(_session(rng, i + k)) for k in range(2000)]
        i += 2000
        data = ("\n".join(lines) + "\n").encode()
        (root / "transcripts" / f"part-{part:04d}.jsonl").write_bytes(data)
        total += len(data)
        part += 1
    beads = [
        json.dumps(
            {
                "id": f"gt-{k:06x}",
                "title": f"{rng.choice(VERBS)} the {rng.choice(NOUNS)}",
                "description": f"Work item {k} for the {rng.choice(NOUNS)}.",
                "status": "open",
                "priority": k % 5,
                "issue_type": "task",
                "updated_at": "2026-03-01T00:00:00Z",
            }
        )
        for k in range(5000)
    ]
    data = ("\n".join(beads) + "\n").encode()
    (root / ".beads" / "issues.jsonl").write_bytes(data)
    return total + len(data)


def _child(code: str, *args: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 9):
        raise SystemExit(f"child failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,
        "stdout": p.stdout.strip()[-500:],
        "returncode": p.returncode,
    }


BUILD = """
import sys
from corpus.build import build_corpus
from corpus.config import CorpusConfig
cfg = CorpusConfig.model_validate({"gates": {"max_quarantine_rate": 1.0}})
r = build_corpus(cfg, [sys.argv[1]], sys.argv[2])
print(r.manifest["counts"]["sft"]["total"], r.manifest["counts"]["dpo"]["total"])
"""
SCRUB = """
import sys, pathlib, json
from corpus.scrub import Scrubber
s = Scrubber()
n = 0
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.jsonl")):
    for line in p.read_text().splitlines():
        for t in json.loads(line).get("turns", []):
            s.scrub(t["text"]); n += 1
print(n, sum(s.counts.values()))
"""
DETECT_SECRETS = """
import sys
from detect_secrets.core.scan import scan_file
from detect_secrets.settings import default_settings
n = 0
with default_settings():
    for f in sys.argv[1:]:
        n += sum(1 for _ in scan_file(f))
print(n)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="size of the generated rig in MB")
    ap.add_argument(
        "--ds-mb", type=float, default=3.0, help="MB of the same text given to detect-secrets alone"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="node0-bench-corpus-") as tmp:
        rig, out = Path(tmp) / "rig", Path(tmp) / "runs"
        size = generate(rig, args.mb)
        mb = size / 1e6
        print(f"generated rig: {mb:.1f} MB", flush=True)
        build = _child(BUILD, str(rig), str(out))
        print(f"build: {build}", flush=True)
        scrub = _child(SCRUB, str(rig))
        print(f"scrub: {scrub}", flush=True)
        # a slice of whole files of the same transcripts, for detect-secrets alone
        ds_dir = Path(tmp) / "ds"
        ds_dir.mkdir()
        budget, ds_files, ds_bytes = args.ds_mb * 1e6, [], 0
        for p in sorted((rig / "transcripts").glob("*.jsonl")):
            for k, chunk in enumerate(p.read_bytes().splitlines(keepends=True)):
                if ds_bytes >= budget:
                    break
                f = ds_dir / f"{p.stem}-{k}.jsonl"
                f.write_bytes(chunk)
                ds_files.append(str(f))
                ds_bytes += len(chunk)
            if ds_bytes >= budget:
                break
        ds = _child(DETECT_SECRETS, *ds_files)
        print(f"detect-secrets: {ds}", flush=True)
    ds_rate = ds_bytes / 1e6 / ds["cpu_s"]
    result = {
        "corpus_mb": round(mb, 1),
        "build_mb_per_s_wall": round(mb / build["wall_s"], 3),
        "build_mb_per_cpu_s": round(mb / build["cpu_s"], 3),
        "build_peak_rss_mb": round(build["peak_rss_mb"]),
        "scrub_only_mb_per_cpu_s": round(mb / scrub["cpu_s"], 3),
        "detect_secrets_mb": round(ds_bytes / 1e6, 2),
        "detect_secrets_mb_per_cpu_s": round(ds_rate, 3),
        "build_vs_detect_secrets_ratio": round((mb / build["cpu_s"]) / ds_rate, 1),
        "scrub_vs_detect_secrets_ratio": round((mb / scrub["cpu_s"]) / ds_rate, 1),
        "build_output": build["stdout"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
