"""`node0 corpus audit RUN_DIR --sample N`: the periodic audit of scrubbed output.

The fourth scrub layer of the spec ("periodic audit/sampling of scrubbed output to catch novel
credential formats"). It draws a seeded sample of the examples a build wrote and shows, for
each, what a reviewer needs to judge the scrubber without seeing a secret:

* the spans nearest to each finding -- every ``<SECRET:…>`` / ``<PII:…>`` placeholder with the
  text around it, so a replacement that cut a value short or missed its neighbour shows;
* every token left that is long and high-entropy or shaped like a credential (a vendor-like
  prefix, or letters, digits and symbols mixed), with its context *masked*: the token itself
  is shown as its first 3 characters, ``…`` and its length.

Each audit is recorded in the run: ``audits/audit-<seed>-<n>.json`` (the sampled ids, the
suspects, the reviewer and verdict) and one line in ``audits/index.jsonl``. A new format found
this way becomes a node0 rule in ``corpus/scrub/rules/vendor.toml`` with a test.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from base.errors import DataError
from corpus.scrub.findings import mask, shannon_entropy

_FIELDS = ("turns", "prompt", "chosen", "rejected")
_PLACEHOLDER = re.compile(r"<(?:SECRET|PII):[a-z0-9_]+>")
_TOKEN = re.compile(r"[A-Za-z0-9+/_\-.=:@~]{16,}")
_VENDORISH = re.compile(r"^[A-Za-z]{2,10}[_\-.][A-Za-z0-9_\-]{16,}")
_HEX_OR_DIGITS = re.compile(r"[0-9a-f\-]+|[0-9A-F\-]+|[\d.:\-]+")
WINDOW = 40


@dataclass(frozen=True)
class Suspect:
    """A token left in scrubbed text that a reviewer should look at."""

    example: str
    where: str
    why: str
    length: int
    context: str
    """The text around it, with the token (and any other suspect token) masked."""


def _mask_tokens(text: str) -> str:
    """``text`` with every suspect token shown as its first 3 characters and its length."""

    def one(m: re.Match[str]) -> str:
        tok = m.group()
        return f"{mask(tok)}(len {len(tok)})" if suspect_reason(tok) else tok

    return _TOKEN.sub(one, text)


def suspect_reason(token: str) -> str | None:
    """Why ``token`` looks like key material, or None when it does not."""
    core = token.strip(".:=@-_")
    if len(core) < 16 or _PLACEHOLDER.search(core) or "/" in core[:1]:
        return None
    if _HEX_OR_DIGITS.fullmatch(core):
        return None  # digests, UUIDs, timestamps: recognisable and kept on purpose
    classes = sum(
        (
            any(c.islower() for c in core),
            any(c.isupper() for c in core),
            any(c.isdigit() for c in core),
        )
    )
    if _VENDORISH.match(core) and classes >= 2 and any(c.isdigit() for c in core):
        return "credential-shaped (prefix + random body)"
    if len(core) >= 20 and classes == 3 and shannon_entropy(core) >= 4.0:
        return f"high entropy ({shannon_entropy(core):.1f} bits/char)"
    return None


def _texts(row: dict):
    for field in _FIELDS:
        for i, turn in enumerate(row.get(field, [])):
            yield f"{field}[{i}]", turn["text"]


def _datasets(run_dir: Path) -> list[Path]:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        raise DataError(
            f"{run_dir} is not a corpus run directory (no manifest.json)",
            hint="pass the run directory that `node0 corpus build` printed",
        )
    try:
        outputs = json.loads(manifest.read_text(encoding="utf-8"))["outputs"]
    except (ValueError, KeyError) as exc:
        raise DataError(f"{manifest}: not a corpus manifest ({exc})") from exc
    return [run_dir / rel for rel in sorted(outputs) if rel.startswith(("sft/", "dpo/"))]


def audit_run(
    run_dir: str | Path,
    sample: int,
    seed: int = 0,
    *,
    reviewer: str | None = None,
    verdict: str | None = None,
    notes: str = "",
) -> dict:
    """Draw and inspect a seeded sample; write the audit record into the run; return it.

    Raises:
        DataError: not a corpus run directory, no datasets written, or ``sample`` < 1.
    """
    run_dir = Path(run_dir)
    if sample < 1:
        raise DataError(f"--sample must be at least 1, got {sample}")
    rows = []
    for path in _datasets(run_dir):
        for line in path.read_text(encoding="utf-8").splitlines():
            rows.append(json.loads(line))
    if not rows:
        raise DataError(
            f"{run_dir} holds no written examples to audit",
            hint="a build whose gates failed writes no datasets; see quality_report.json",
        )
    rows.sort(key=lambda r: r["id"])
    picked = random.Random(seed).sample(rows, min(sample, len(rows)))
    samples = []
    for row in picked:
        spans, suspects = [], []
        for where, text in _texts(row):
            for m in _PLACEHOLDER.finditer(text):
                a, b = max(0, m.start() - WINDOW), min(len(text), m.end() + WINDOW)
                spans.append({"where": where, "context": _mask_tokens(text[a:b])})
            for m in _TOKEN.finditer(text):
                why = suspect_reason(m.group())
                if why:
                    a, b = max(0, m.start() - WINDOW), min(len(text), m.end() + WINDOW)
                    ctx = _mask_tokens(text[a:b])
                    suspects.append(Suspect(row["id"], where, why, len(m.group()), ctx).__dict__)
        samples.append({"example": row["id"], "placeholder_spans": spans, "suspects": suspects})
    record = {
        "run_dir": str(run_dir),
        "seed": seed,
        "requested": sample,
        "sampled": len(picked),
        "population": len(rows),
        "audited_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reviewer": reviewer,
        "verdict": verdict,
        "notes": notes,
        "placeholder_spans": sum(len(s["placeholder_spans"]) for s in samples),
        "suspects": sum(len(s["suspects"]) for s in samples),
        "samples": samples,
    }
    out = run_dir / "audits"
    out.mkdir(exist_ok=True)
    name = f"audit-{seed}-{sample}.json"
    (out / name).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    summary = {k: record[k] for k in ("audited_at", "seed", "sampled", "suspects", "reviewer")}
    with (out / "index.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({**summary, "verdict": verdict, "file": name}, sort_keys=True) + "\n")
    record["file"] = str(out / name)
    return record


def format_audit(record: dict) -> str:
    """The human-readable report (values already masked)."""
    lines = [
        f"audit of {record['run_dir']}: {record['sampled']} of {record['population']} examples "
        f"(seed {record['seed']}), {record['placeholder_spans']} placeholder span(s), "
        f"{record['suspects']} suspect token(s)"
    ]
    for s in record["samples"]:
        if not (s["placeholder_spans"] or s["suspects"]):
            continue
        lines.append(f"- {s['example']}")
        for span in s["placeholder_spans"]:
            lines.append(f"    near finding, {span['where']}: …{span['context']}…")
        for sus in s["suspects"]:
            lines.append(f"    SUSPECT {sus['where']} ({sus['why']}): …{sus['context']}…")
    lines.append(f"recorded in {record['file']}")
    return "\n".join(lines)
