"""`node0 corpus build`: collect → share filter → recency → format → scrub → quality → dedup →
partition → gates → write, with every input record accounted for.

The build is deterministic: inputs are listed in sorted order, every collection is sorted
before it is written, ids derive from content and source location, and nothing time- or
machine-dependent enters the outputs or the manifest (the run record keeps the timestamps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from base.errors import DataError, QualityGateError
from corpus.config import CorpusConfig
from corpus.dedup import deduplicate
from corpus.format import Draft, format_units
from corpus.ledger import Ledger
from corpus.manifest import (
    MANIFEST_SCHEMA,
    OutputWriter,
    counts,
    json_bytes,
    jsonl_bytes,
    ledger_rows,
)
from corpus.partition import partition_path
from corpus.quality import QualityChecker
from corpus.readers import read_beads, read_claude_code, read_docs, read_formulas, read_transcripts
from corpus.recency import apply_recency
from corpus.scrub import Scrubber
from corpus.units import Unit
from dataload.schema import DPOPair, SFTExample
from gastown.rig import Rig, load_rig
from provenance import RunDir, create_run_dir, sha256_file, sha256_json

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    run_dir: Path
    manifest: dict
    gates_passed: bool


def collect(rigs: list[Rig], cfg: CorpusConfig, ledger: Ledger) -> tuple[list[Unit], list[dict]]:
    """Read every source of every rig; returns the units and the list of input files."""
    units: list[Unit] = []
    inputs: list[dict] = []
    src, ex = cfg.sources, cfg.sources.exclude
    for rig in rigs:
        files = {
            "transcript": rig.files(src.transcripts, ex),
            "claude_code": rig.files(src.claude_code, ex),
            "bead": rig.files(src.beads, ex),
            "doc": rig.files(src.docs, ex),
            "history": rig.files(["**/*"], ex, under=src.history_dir),
            "formula": rig.files(src.formulas, ex),
        }
        units += read_transcripts(rig, files["transcript"], ledger, cfg.roles)
        units += read_claude_code(
            rig, files["claude_code"], ledger, unknown_outcome=cfg.claude_code_unknown_outcome
        )
        units += read_beads(rig, files["bead"], ledger, cfg.roles, cfg.default_bead_role)
        units += read_docs(rig, files["doc"], files["history"], src.history_dir, ledger)
        units += read_formulas(rig, files["formula"], ledger)
        for rel in sorted({f for group in files.values() for f in group}):
            p = rig.root / rel
            inputs.append(
                {"rig": rig.name, "file": rel, "sha256": sha256_file(p), "size": p.stat().st_size}
            )
    return units, inputs


def share_filter(units: list[Unit], rigs: list[Rig], target: str, ledger: Ledger) -> list[Unit]:
    """Keep the target rig's units and those of rigs that opted in to sharing."""
    shared = {r.name for r in rigs if r.share_across_rigs}
    kept = []
    for u in units:
        if u.rig == target or u.rig in shared:
            kept.append(u)
        else:
            ledger.mark(
                u.refs,
                "rejected",
                "rig_not_shared",
                f"rig {u.rig!r} has not opted in to cross-rig sharing",
            )
    return kept


# Quarantine reasons that belong to one example's text, not to the record it came from.
EXAMPLE_REASONS = frozenset({"uncertain_secret", "leak_found"})


def _example_row(d: Draft, reason: str, detail: str) -> dict:
    return {
        "example": d.id,
        "kind": d.kind,
        "records": [str(r) for r in d.refs],
        "reason": reason,
        "detail": detail,
    }


def scrub_drafts(
    drafts: list[Draft], scrubber: Scrubber, ledger: Ledger, held: list[dict]
) -> list[Draft]:
    """Scrub every turn; an example with an uncertain finding is quarantined (alone: see
    :func:`drop_tainted`) and listed in ``held`` with masked reasons."""
    kept = []
    for d in drafts:
        reasons: list[str] = []

        def clean(turns: list[tuple[str, str]], _reasons: list[str] = reasons) -> list:
            out = []
            for speaker, text in turns:
                res = scrubber.scrub(text)
                _reasons.extend(res.reasons)
                out.append((speaker, res.text))
            return out

        d.turns, d.prompt = clean(d.turns), clean(d.prompt)
        d.chosen, d.rejected = clean(d.chosen), clean(d.rejected)
        if reasons:
            detail = "; ".join(sorted(reasons))
            ledger.mark(d.refs, "quarantined", "uncertain_secret", detail)
            held.append(_example_row(d, "uncertain_secret", detail))
        else:
            kept.append(d)
    return kept


def quality_filter(drafts: list[Draft], cfg: CorpusConfig, ledger: Ledger) -> list[Draft]:
    checker = QualityChecker(cfg.quality)
    kept = []
    for d in drafts:
        v = checker.check(d)
        d.quality_score = v.score
        if v.anomalies:
            ledger.mark(
                d.refs,
                "quarantined",
                "anomaly:" + v.anomalies[0].split(":")[0],
                ", ".join(v.anomalies),
            )
        elif v.score < cfg.quality.min_score:
            ledger.mark(d.refs, "rejected", "low_quality", f"score {v.score}")
        else:
            kept.append(d)
    return kept


def drop_tainted(drafts: list[Draft], ledger: Ledger) -> list[Draft]:
    """The smallest unit that holds the doubt is quarantined.

    An uncertain secret (or a leak found at the end) is a property of the text that holds
    it, and every example is scrubbed on its own, so an example that repeats that text is
    quarantined by the same finding: only that example goes, and the record's other, clean
    examples stay. Any other quarantine (an injection phrase, an anomaly) says something about
    the record itself: no other example uses a record once one of those was raised on it.
    """
    tainted = ledger.quarantined(ignore=EXAMPLE_REASONS)
    kept = []
    for d in drafts:
        bad = sorted(r for r in d.refs if r in tainted)
        if bad:
            ledger.mark(
                d.refs,
                "quarantined",
                "record_quarantined",
                f"{bad[0]} was quarantined by another example",
            )
        else:
            kept.append(d)
    return kept


def _turns(turns: list[tuple[str, str]]) -> list[dict]:
    return [{"speaker": s, "text": t} for s, t in turns]


def to_record(d: Draft) -> dict:
    """The validated dataset record (raises DataError on a schema violation: a pipeline bug)."""
    try:
        if d.kind == "sft":
            rec = SFTExample(
                id=d.id,
                role=d.role,
                task=d.task,
                turns=_turns(d.turns),
                quality_score=d.quality_score,
                provenance=d.provenance,
            )
        else:
            rec = DPOPair(
                id=d.id,
                role=d.role,
                task=d.task,
                prompt=_turns(d.prompt),
                chosen=_turns(d.chosen),
                rejected=_turns(d.rejected),
                failure_mode=d.failure_mode,
                quality_score=d.quality_score,
                chosen_provenance=d.provenance,
                rejected_provenance=d.rejected_provenance,
            )
    except ValidationError as exc:
        raise DataError(f"example {d.id} violates the dataset schema: {exc}") from exc
    return rec.model_dump(mode="json")


def evaluate_gates(
    cfg: CorpusConfig,
    recon: dict,
    sft: list[dict],
    dpo: list[dict],
    leaks: list[str],
    checked: int,
) -> list[dict]:
    g = cfg.gates
    read = sum(e["read"] for e in recon["by_kind"].values())
    quarantined = sum(e["quarantined"] for e in recon["by_kind"].values())
    rate = quarantined / read if read else 0.0
    scores = [r["quality_score"] for r in sft + dpo]
    mean = sum(scores) / len(scores) if scores else 0.0
    leak_rate = len(leaks) / checked if checked else 0.0
    return [
        {
            "gate": "reconciliation",
            "passed": recon["ok"],
            "value": recon["ok"],
            "limit": "read == accepted + quarantined + rejected for every source",
        },
        {
            "gate": "min_sft_examples",
            "passed": len(sft) >= g.min_sft_examples,
            "value": len(sft),
            "limit": g.min_sft_examples,
        },
        {
            "gate": "max_quarantine_rate",
            "passed": rate <= g.max_quarantine_rate,
            "value": round(rate, 4),
            "limit": g.max_quarantine_rate,
        },
        {
            "gate": "min_mean_quality",
            "passed": mean >= g.min_mean_quality,
            "value": round(mean, 4),
            "limit": g.min_mean_quality,
        },
        {
            "gate": "leak_check",
            "passed": leak_rate <= g.max_leak_rate,
            "value": round(leak_rate, 4),
            "limit": g.max_leak_rate if g.leak_check else "disabled",
            "quarantined_examples": len(leaks),
            "checked_examples": checked,
            "details": leaks[:20],
        },
    ]


def leak_check(
    records: list[tuple[Draft, dict]], scrubber: Scrubber, ledger: Ledger, held: list[dict]
) -> tuple[list[tuple[Draft, dict]], list[str]]:
    """Re-scan every output text; an example with any finding left is quarantined (it is
    never written) and reported with masked reasons. Returns the clean records and one line
    per quarantined example."""
    kept, leaks = [], []
    for d, r in records:
        found = []
        for field in ("turns", "prompt", "chosen", "rejected"):
            for i, t in enumerate(r.get(field, [])):
                found += [
                    f"{field}[{i}]: {f.describe(t['text'])}" for f in scrubber.scan(t["text"])
                ]
        if found:
            detail = "; ".join(found)
            ledger.mark(d.refs, "quarantined", "leak_found", detail)
            held.append(_example_row(d, "leak_found", detail))
            leaks.append(f"{r['id']} {detail}")
        else:
            kept.append((d, r))
    return kept, leaks


def build_corpus(
    cfg: CorpusConfig,
    rig_paths: list[str | Path],
    out_root: str | Path,
    *,
    config_path: str | None = None,
    argv: list[str] | None = None,
) -> BuildResult:
    """Build the corpus into a new run directory under ``out_root``.

    Raises:
        QualityGateError: a gate failed (the report and manifest are written, datasets are not).
        DataError / ConfigError: unreadable rigs or invalid rig settings.
    """
    if not rig_paths:
        raise DataError("no rig given; pass --rig PATH at least once")
    rigs = [load_rig(p) for p in rig_paths]
    names = [r.name for r in rigs]
    if len(set(names)) != len(names):
        raise DataError(f"rig names must be unique, got {names}")
    target = cfg.target_rig or rigs[0].name
    if target not in names:
        raise DataError(f"target rig {target!r} is not among the given rigs {names}")
    config_dump = cfg.model_dump(mode="json")
    run: RunDir = create_run_dir(
        out_root, "corpus", config=config_dump, config_path=config_path, seeds={}, argv=argv
    )
    log.info(
        "corpus build: run dir %s, config sha256 %s, target rig %s",
        run.path,
        sha256_json(config_dump)[:12],
        target,
    )

    ledger = Ledger()
    units, inputs = collect(rigs, cfg, ledger)
    for entry in inputs:
        run.record["inputs"].append(
            {
                "path": f"{entry['rig']}:{entry['file']}",
                "sha256": entry["sha256"],
                "size": entry["size"],
            }
        )
    log.info("collect: %d input files, %d units", len(inputs), len(units))
    units = share_filter(units, rigs, target, ledger)
    units, review = apply_recency(units, ledger, cfg.clean)
    log.info("recency: %d units kept, %d reversion(s) flagged for review", len(units), len(review))
    drafts = format_units(units, ledger)
    scrubber = Scrubber(
        use_library=cfg.scrub.detect_secrets,
        use_entropy=cfg.scrub.entropy,
        scrub_pii=cfg.scrub.pii,
        keep_private_ips=cfg.scrub.keep_private_ips,
        sure_score=cfg.scrub.sure_score,
        uncertain_score=cfg.scrub.uncertain_score,
    )
    held: list[dict] = []  # examples quarantined on their own (the record may still be used)
    drafts = scrub_drafts(drafts, scrubber, ledger, held)
    log.info("scrub: %d drafts clean, %d placeholders", len(drafts), sum(scrubber.counts.values()))
    drafts = quality_filter(drafts, cfg, ledger)
    drafts = drop_tainted(drafts, ledger)
    drafts = deduplicate(drafts, ledger, cfg.clean.near_duplicate_jaccard)
    records = [(d, to_record(d)) for d in drafts]
    checked = len(records)
    leaks: list[str] = []
    if cfg.gates.leak_check:
        records, leaks = leak_check(records, scrubber, ledger, held)
        if leaks:
            log.warning("leak check: %d example(s) quarantined, not written", len(leaks))
    for d, _ in records:
        ledger.mark(d.refs, "accepted", "written", d.id)
    sft = [r for d, r in records if d.kind == "sft"]
    dpo = [r for d, r in records if d.kind == "dpo"]
    log.info("format: %d SFT examples, %d preference pairs", len(sft), len(dpo))

    recon = ledger.reconciliation()
    gates = evaluate_gates(cfg, recon, sft, dpo, leaks, checked)
    passed = all(g["passed"] for g in gates)

    out = OutputWriter(run.path)
    quarantined, rejected, q_reasons, r_reasons = ledger_rows(ledger)
    if passed:
        parts: dict[str, list[dict]] = {}
        for d, r in records:
            parts.setdefault(partition_path(d.kind, d.role, d.task), []).append(r)
        for rel in sorted(parts):
            rows = sorted(parts[rel], key=lambda r: r["id"])
            out.write(rel, jsonl_bytes(rows), records=len(rows))
    out.write("quarantine.jsonl", jsonl_bytes(quarantined), records=len(quarantined))
    out.write("rejected.jsonl", jsonl_bytes(rejected), records=len(rejected))
    held.sort(key=lambda row: (row["example"], row["reason"]))
    out.write("quarantined_examples.jsonl", jsonl_bytes(held), records=len(held))
    out.write("review.jsonl", jsonl_bytes(review), records=len(review))
    report = {
        "passed": passed,
        "gates": gates,
        "quarantine_reasons": dict(sorted(q_reasons.items())),
        "rejected_reasons": dict(sorted(r_reasons.items())),
        "datasets_written": passed,
    }
    out.write("quality_report.json", json_bytes(report))
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "config_sha256": sha256_json(config_dump),
        "target_rig": target,
        "rigs": [{"name": r.name, "share_across_rigs": r.share_across_rigs} for r in rigs],
        "inputs": inputs,
        "inputs_sha256": sha256_json(inputs),
        "outputs": dict(sorted(out.files.items())),
        "counts": {
            "sft": counts(sft),
            "dpo": counts(dpo),
            "placeholders": dict(sorted(scrubber.counts.items())),
            "quarantined_records": len(quarantined),
            "quarantined_examples": len(held),
            "rejected_records": len(rejected),
            "reversions_flagged": len(review),
        },
        "reconciliation": recon,
        "gates_passed": passed,
    }
    (run.path / "manifest.json").write_bytes(json_bytes(manifest))
    for rel in sorted(out.files):
        run.add_artifact(rel)
    run.add_artifact("manifest.json")
    run.set("manifest_sha256", sha256_file(run.path / "manifest.json"))
    if not passed:
        run.finish("failed", failed_gates=[g["gate"] for g in gates if not g["passed"]])
        failed = ", ".join(
            f"{g['gate']} (value {g['value']}, limit {g['limit']})"
            for g in gates
            if not g["passed"]
        )
        raise QualityGateError(
            f"corpus quality gate failed: {failed}; report: {run.path / 'quality_report.json'}",
            hint="datasets were not written; see quarantine.jsonl",
        )
    run.finish("done")
    return BuildResult(run.path, manifest, passed)


__all__ = ["BuildResult", "build_corpus"]
