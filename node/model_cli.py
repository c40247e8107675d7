"""``node0 model …``: the versioned model registry (register/list/show/adapters/deploy/
rollback/prune/stale). See docs/registry.md.

Every command takes ``--json`` (one JSON document on stdout; a refusal prints
``{"error": …, "reason": …, "exit_code": …}`` there too). Commands that produce something
(register, deploy, rollback, prune) write a run directory with their record.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from base.errors import ConfigError, DataError, Node0Error, QualityGateError
from base.hashing import sha256_file

REGISTRY_EPILOG = (
    "registry: $NODE0_REGISTRY or $NODE0_HOME/registry.db; artifacts: the store it records "
    "(default $NODE0_HOME/models/)"
)


def _open(args):
    from registry import Registry

    return Registry.open(args.registry, args.store)


def _emit(args, data, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _guarded(handler):
    """Run ``handler``; with ``--json`` a refusal is also printed as JSON on stdout."""

    def run(args) -> int:
        try:
            return handler(args)
        except Node0Error as exc:
            if getattr(args, "json", False):
                print(
                    json.dumps(
                        {
                            "error": str(exc).split("\n")[0],
                            "reason": getattr(exc, "reason", None),
                            "exit_code": int(exc.exit_code),
                        }
                    )
                )
            raise

    return run


def _rig_name(rig: str) -> str:
    """A rig given as a directory is named by its rig.toml; otherwise the text is the name."""
    if Path(rig).is_dir():
        from gastown.rig import load_rig

        return load_rig(rig).name
    return rig


def _run_dir(args, kind: str, config: dict):
    from provenance import create_run_dir

    return create_run_dir(args.runs_dir, kind, config=config)


# -- register ----------------------------------------------------------------------------


def _read_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run_record.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{run_dir} has no readable run_record.json: {exc}") from exc


def _recorded_sha(record: dict, rel: str) -> str | None:
    for artifact in record.get("artifacts", []):
        if artifact.get("path") == rel:
            return artifact.get("sha256")
    return None


def _adapter_from_gather(run_dir: Path) -> tuple[Path, str | None, dict]:
    """The adapter directory of a gather run and the sha256 its record gives the weights."""
    record = _read_record(run_dir)
    candidates = [
        a["path"]
        for a in record.get("artifacts", [])
        if a.get("path", "").endswith("adapter_model.safetensors")
    ]
    out = record.get("output_dir")
    if not candidates:
        found = sorted(run_dir.rglob("adapter_model.safetensors"))
        if out:
            found += sorted(Path(out).rglob("adapter_model.safetensors"))
        if not found:
            raise DataError(f"{run_dir}: no adapter in the run (gather with --adapters-only)")
        return found[0].parent, None, record
    rel = candidates[0]
    path = Path(rel) if Path(rel).is_absolute() else run_dir / rel
    return path.parent, _recorded_sha(record, rel), record


def _train_lineage(train_run: Path | None) -> tuple[dict, dict]:
    if train_run is None:
        return {}, {}
    record = _read_record(train_run)
    lineage = {
        "train_run_dir": str(train_run.resolve()),
        "run_record_sha256": sha256_file(train_run / "run_record.json"),
        "config_sha256": (record.get("config") or {}).get("sha256"),
        # the training data as the trainer read it: sha256 of its example order (epoch 0)
        "corpus_sha256": (record.get("data") or {}).get("order_hash_epoch0"),
    }
    hyper = {}
    config_file = train_run / "config_resolved.yaml"
    if config_file.is_file():
        import yaml

        config = yaml.safe_load(config_file.read_text()) or {}
        hyper = {
            k: config.get(k)
            for k in ("learning_rate", "steps", "micro_batch_size", "max_grad_norm", "adapter")
            if k in config
        }
        hyper["lora"] = config.get("lora")
    return lineage, hyper


def run_register(args) -> int:
    from registry import conventions_fingerprint, read_scores

    if (args.adapter is None) == (args.gather_run is None):
        raise ConfigError("give exactly one of --adapter DIR or --gather-run DIR")
    expected = args.sha256
    source_run = None
    if args.gather_run is not None:
        adapter_dir, recorded, _ = _adapter_from_gather(args.gather_run)
        expected = expected or recorded
        source_run = str(args.gather_run.resolve())
    else:
        adapter_dir = args.adapter
    lineage, hyper = _train_lineage(args.train_run)
    lineage["source_run_dir"] = source_run
    if args.corpus_manifest is not None:
        lineage["corpus_manifest_sha256"] = sha256_file(args.corpus_manifest)
        lineage.setdefault("corpus_sha256", None)
        lineage["corpus_sha256"] = lineage["corpus_sha256"] or lineage["corpus_manifest_sha256"]
    scores = read_scores(args.eval_run) if args.eval_run is not None else None
    conventions = {}
    if args.rig is not None:
        conventions = {
            "rig": _rig_name(str(args.rig)),
            "root": str(Path(args.rig).resolve()),
            "files": conventions_fingerprint(args.rig),
        }
    registry = _open(args)
    run = _run_dir(args, "register", {k: str(v) for k, v in vars(args).items() if k != "handler"})
    version = registry.register(
        role=args.role,
        base_model=args.base_model,
        adapter_dir=adapter_dir,
        expected_sha256=expected,
        name=args.name,
        task=args.task,
        lineage=lineage,
        hyperparameters=hyper,
        eval_scores=scores,
        eval_run_dir=str(args.eval_run.resolve()) if args.eval_run else None,
        dpo_pairs=args.dpo_pairs,
        conventions=conventions,
        reason=args.reason,
    )
    run.finish("done", version=version.id, sha256=version.adapters[0].sha256)
    _emit(
        args,
        version.as_dict() | {"run_dir": str(run.path)},
        f"registered {version.id} (role {version.role}, base {version.base_model}, gate "
        f"{version.gate}; adapter sha256 {version.adapters[0].sha256[:16]}…)\n"
        f"  run record: {run.path / 'run_record.json'}",
    )
    return 0


# -- list / show / adapters --------------------------------------------------------------


def _composite(version) -> str:
    return f"{version.eval_scores['composite']:g}" if version.eval_scores else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run_list(args) -> int:
    registry = _open(args)
    versions = registry.versions(include_pruned=args.all)
    rows = [["VERSION", "ROLE", "BASE", "GATE", "COMPOSITE", "DEPLOYED", "STATUS", "CREATED"]]
    for v in versions:
        deployed = ",".join(f"{d['rig']}/{d['role']}" for d in v.deployed) or "-"
        rows.append(
            [
                v.id,
                v.role,
                v.base_model,
                v.gate,
                _composite(v),
                deployed,
                v.status,
                v.created_at[:19],
            ]
        )
    text = _table(rows) if versions else "no model versions registered"
    _emit(args, [v.as_dict() for v in versions], text)
    return 0


def run_show(args) -> int:
    from registry.scores import summary

    registry = _open(args)
    v = registry.get(args.version)
    events = registry.events(v.id)
    lines = [
        f"{v.id}  (role {v.role}, base {v.base_model}, {v.status}, created {v.created_at})",
        f"  eval: {summary(v.eval_scores)}",
        f"  gate: {v.gate}" + (f"  (run {v.eval_run_dir})" if v.eval_run_dir else ""),
        "  deployed: "
        + (
            ", ".join(
                f"{d['rig']}/{d['role']} since {d['since'][:19]}"
                + (" UNGATED" if d["ungated"] else "")
                for d in v.deployed
            )
            or "nowhere"
        ),
        "  lineage:",
        f"    parent: {v.parent or '-'}",
        f"    training run: {v.train_run_dir or '-'}",
        f"    run record sha256: {v.run_record_sha256 or '-'}",
        f"    config sha256: {v.config_sha256 or '-'}",
        f"    corpus sha256: {v.corpus_sha256 or '-'}",
        f"    corpus manifest sha256: {v.corpus_manifest_sha256 or '-'}",
        f"    source run: {v.source_run_dir or '-'}",
        f"    conventions: {len(v.conventions.get('files', {}))} document(s) of rig "
        f"{v.conventions.get('rig', '-')}",
        f"    dpo pairs: {v.dpo_pairs}",
        f"    hyperparameters: {json.dumps(v.hyperparameters, sort_keys=True)}",
        "  adapters:",
    ]
    for a in v.adapters:
        lines.append(
            f"    {a.name}: task {a.task}, rank {a.rank}, alpha {a.alpha:g}, models "
            f"{','.join(a.compatible_models)}, sha256 {a.sha256}, {a.size} B"
        )
    lines.append("  events:")
    lines += [
        f"    {e['at'][:19]} {e['kind']} {e['rig'] or ''} {e['reason']}".rstrip() for e in events
    ]
    _emit(args, v.as_dict() | {"events": events}, "\n".join(lines))
    return 0


def run_adapters(args) -> int:
    registry = _open(args)
    adapters = registry.adapters()
    rows = [["ADAPTER", "TASK", "RANK", "ALPHA", "MODELS", "SHA256", "STATUS"]]
    for a in adapters:
        rows.append(
            [
                a["name"],
                a["task"],
                str(a["rank"]),
                f"{a['alpha']:g}",
                ",".join(a["compatible_models"]),
                a["sha256"][:16],
                a["status"],
            ]
        )
    _emit(args, adapters, _table(rows) if adapters else "no adapters registered")
    return 0


# -- deploy / rollback -------------------------------------------------------------------


def run_deploy(args) -> int:
    from node.town_settings import default_settings_path, write_role_entry

    registry = _open(args)
    version = registry.get(args.version)
    role = args.role or version.role
    rig = _rig_name(args.rig)
    settings = args.settings or default_settings_path()
    run = _run_dir(
        args,
        "deploy",
        {
            "version": args.version,
            "rig": rig,
            "role": role,
            "ungated": args.ungated,
            "settings": str(settings),
        },
    )
    row = registry.deploy(
        args.version,
        rig=rig,
        role=role,
        ungated=args.ungated,
        reason=args.reason,
        settings_path=str(settings),
    )
    entry = write_role_entry(settings, role=role, version_id=args.version, rig=rig)
    run.add_artifact(settings)
    run.finish("done", deployment=row)
    _emit(
        args,
        {"deployment": row, "settings": str(settings), "entry": entry, "run_dir": str(run.path)},
        f"deployed {args.version} to {role} on {rig}"
        + (" (UNGATED)" if args.ungated else "")
        + f"\n  town settings: {settings} (previous kept as {settings.name}.prev)",
    )
    return 0


def run_rollback(args) -> int:
    from node.town_settings import default_settings_path, write_role_entry

    registry = _open(args)
    rig = _rig_name(args.rig)
    settings = args.settings or default_settings_path()
    run = _run_dir(args, "rollback", {"rig": rig, "role": args.role, "settings": str(settings)})
    ended, current = registry.rollback(rig=rig, role=args.role, reason=args.reason)
    entry = write_role_entry(settings, role=args.role, version_id=current["version_id"], rig=rig)
    run.add_artifact(settings)
    run.finish("done", ended=ended, current=current)
    _emit(
        args,
        {
            "from": ended["version_id"],
            "to": current["version_id"],
            "settings": str(settings),
            "entry": entry,
            "run_dir": str(run.path),
        },
        f"rolled back {args.role} on {rig}: {ended['version_id']} -> {current['version_id']}\n"
        f"  town settings: {settings}",
    )
    return 0


# -- prune -------------------------------------------------------------------------------


def run_prune(args) -> int:
    registry = _open(args)
    plan = registry.prune_plan(args.keep)
    listing = [{"version": v.id, "artifacts": [a.sha256 for a in v.adapters]} for v in plan]
    if not plan:
        _emit(args, {"plan": [], "pruned": []}, "nothing to prune")
        return 0
    text = "deployed nowhere and beyond the newest {}: {}".format(
        args.keep, ", ".join(v.id for v in plan)
    )
    if not args.yes:
        _emit(
            args, {"plan": listing, "pruned": []}, text + "\nnothing removed; give --yes to prune"
        )
        return 0
    print(text, file=sys.stderr)
    run = _run_dir(args, "prune", {"keep": args.keep, "plan": [v.id for v in plan]})
    done = registry.prune(plan, reason=args.reason)
    run.finish("done", pruned=done)
    _emit(
        args,
        {"plan": listing, "pruned": done, "run_dir": str(run.path)},
        "\n".join(
            f"pruned {d['version']} (removed {len(d['removed_artifacts'])} artifact(s))"
            for d in done
        ),
    )
    return 0


# -- stale -------------------------------------------------------------------------------


def run_stale(args) -> int:
    from registry import conventions_fingerprint, drift

    registry = _open(args)
    rig = _rig_name(args.rig)
    if args.version:
        versions = [registry.get(args.version)]
    else:
        deployed = {d["version_id"] for d in registry.current_deployments() if d["rig"] == rig}
        live = [
            v for v in registry.versions(include_pruned=False) if v.conventions.get("rig") == rig
        ]
        latest = {v.name: v for v in live}
        versions = [v for v in live if v.id in deployed or latest[v.name].id == v.id]
    if not versions:
        raise DataError(f"no registered version was trained on the rig {rig}")
    reports, stale = [], []
    for v in versions:
        root = Path(args.rig) if Path(args.rig).is_dir() else Path(v.conventions.get("root", ""))
        if not root.is_dir():
            raise DataError(f"rig directory {root} is missing; give --rig PATH")
        d = drift(v.conventions.get("files", {}), conventions_fingerprint(root))
        is_stale = d.score > args.threshold
        reports.append(
            {
                "version": v.id,
                "role": v.role,
                "stale": is_stale,
                **d.as_dict(),
                "threshold": args.threshold,
                "retrain": f"node0 formula run train-role-model --var role={v.role} "
                f"--var rig={shlex.quote(str(root))}",
            }
        )
        if is_stale:
            stale.append(v.id)
    lines = []
    for r in reports:
        lines.append(
            f"{r['version']}: drift {r['drift_score']:.2f} of {r['documents']} document(s)"
            + (" STALE" if r["stale"] else " fresh")
        )
        lines += [f"  changed {p}" for p in r["changed"]]
        lines += [f"  added   {p}" for p in r["added"]]
        lines += [f"  removed {p}" for p in r["removed"]]
        if r["stale"]:
            lines.append(f"  retrain: {r['retrain']}")
    _emit(args, {"rig": rig, "versions": reports}, "\n".join(lines))
    if stale and args.retrain:
        return _retrain([r for r in reports if r["stale"]])
    if stale:
        print(
            f"node0 model stale: {', '.join(stale)} beyond drift {args.threshold}", file=sys.stderr
        )
        return int(QualityGateError.exit_code)
    return 0


def _retrain(reports: list[dict]) -> int:
    """Run the formula for each stale role, one after the other; stop at the first failure."""
    import subprocess

    for role in sorted({r["role"] for r in reports}):
        command = next(r["retrain"] for r in reports if r["role"] == role)
        print(f"retraining {role}: {command}", file=sys.stderr)
        argv = [sys.executable, "-m", "node.cli", *shlex.split(command)[1:]]
        code = subprocess.call(argv, stdin=subprocess.DEVNULL)
        if code != 0:
            return code
    return 0


# -- parser ------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    from registry.conventions import DEFAULT_STALE_THRESHOLD

    parser = subparsers.add_parser(
        "model",
        help="the versioned model registry (list, show, deploy, rollback, …)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=REGISTRY_EPILOG,
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    def command(name: str, help_text: str, handler):
        p = sub.add_parser(
            name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        p.add_argument(
            "--registry",
            type=Path,
            default=None,
            help="registry database (default $NODE0_REGISTRY, else $NODE0_HOME/registry.db)",
        )
        p.add_argument(
            "--store",
            type=Path,
            default=None,
            help="artifact store (default: the one the database records, else $NODE0_HOME/models)",
        )
        p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
        p.set_defaults(handler=_guarded(handler))
        return p

    from gastown.roles import ROLES

    p = command("register", "register a trained adapter as the next version", run_register)
    p.add_argument("--role", required=True, choices=ROLES, help="the role the model is for")
    p.add_argument("--base-model", default="smollm2-135m", help="base model the adapter is for")
    p.add_argument("--adapter", type=Path, default=None, help="PEFT adapter directory")
    p.add_argument(
        "--gather-run",
        type=Path,
        default=None,
        help="a `node0 gather --adapters-only` run directory (sha256 from its record)",
    )
    p.add_argument("--sha256", default=None, help="expected sha256 of adapter_model.safetensors")
    p.add_argument("--name", default=None, help="model name (default: the role)")
    p.add_argument("--task", default=None, help="the adapter's task (default: the role)")
    p.add_argument("--train-run", type=Path, default=None, help="the training run directory")
    p.add_argument("--eval-run", type=Path, default=None, help="eval run directory (scores.json)")
    p.add_argument("--corpus-manifest", type=Path, default=None, help="corpus manifest file")
    p.add_argument("--rig", default=None, help="rig directory the corpus came from (fingerprint)")
    p.add_argument("--dpo-pairs", type=int, default=0, help="DPO pairs trained on")
    p.add_argument("--reason", default="", help="recorded with the event")

    command("list", "list model versions", run_list).add_argument(
        "--all", action="store_true", help="include pruned versions"
    )
    command("show", "one version with its lineage and events", run_show).add_argument(
        "version", help="version id, e.g. deacon-v2"
    )
    command("adapters", "the adapters of every version", run_adapters)

    p = command(
        "deploy", "deploy a version to a role on a rig (writes the town settings)", run_deploy
    )
    p.add_argument("version", help="version id, e.g. deacon-v2")
    p.add_argument("--rig", required=True, help="rig name or directory")
    p.add_argument("--role", default=None, choices=ROLES, help="default: the version's role")
    p.add_argument(
        "--ungated",
        action="store_true",
        help="deploy without a passing eval gate (recorded as such)",
    )
    p.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="town settings file (default $GT_TOWN_SETTINGS or $NODE0_HOME/town/settings.json)",
    )
    p.add_argument("--reason", default="", help="recorded with the event")

    p = command("rollback", "deploy the previously deployed version again", run_rollback)
    p.add_argument("--rig", required=True, help="rig name or directory")
    p.add_argument("--role", required=True, choices=ROLES, help="the role")
    p.add_argument("--settings", type=Path, default=None, help="town settings file")
    p.add_argument("--reason", default="", help="recorded with the event")

    p = command("prune", "remove versions deployed nowhere beyond the newest K", run_prune)
    p.add_argument("--keep", type=int, default=2, help="newest versions kept per name")
    p.add_argument("--yes", action="store_true", help="really remove (else only list)")
    p.add_argument("--reason", default="", help="recorded with the event")

    p = command("stale", "compare the conventions a version saw with the rig today", run_stale)
    p.add_argument("--rig", required=True, help="rig directory")
    p.add_argument("--version", default=None, help="one version (default: deployed and newest)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="run `node0 formula run train-role-model` for each stale role",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_STALE_THRESHOLD,
        help="drift score (share of documents changed) above which a version is stale",
    )
