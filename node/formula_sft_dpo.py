"""The ``sft-then-dpo`` formula's checks and hooks (``configs/formulas/sft-then-dpo.formula.toml``).

Step 1 (``sft``) trains ``<name>-sft`` with a config generated from ``sft_config``;
``sft_export`` gathers it as a PEFT directory; step 2 (``dpo``) trains ``<name>-dpo`` with a
config generated from ``dpo_config`` whose ``init_from`` is that directory and whose
``dpo.reference_adapter`` is ``<name>-sft`` (still on the stages after step 1), so DPO starts at
the reference: its postcondition checks the step-0 reward margin is 0. ``dpo_export`` gathers
the DPO adapter. The runner (:mod:`node.formula_run`) looks the hooks up by phase id.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from base.errors import ExitCode
from lora.config import check_adapter_name
from node.formula_run import (
    Context,
    PhaseFailed,
    _peers_args,
    _trainer_done,
    _watch_train,
    record_gather,
)
from provenance import atomic_write

START_TOLERANCE = 1e-2
"""|held-out reward margin| at DPO step 0 (β-scaled; float32 stages give 0 exactly, half
precision batches the policy and reference rows differently)."""


def _adapter(ctx: Context, kind: str) -> str:
    name = f"{ctx.vars['name']}-{kind}".lower()
    try:
        check_adapter_name(name)
    except ValueError as exc:
        raise PhaseFailed(f"--var name: {exc}", ExitCode.CONFIG, "bad_name") from exc
    return name


def _write_config(ctx: Context, source: str, kind: str, steps: int, **extra) -> None:
    base = yaml.safe_load(Path(ctx.vars[source]).read_text()) or {}
    rank = ctx.vars["lora_rank"]
    adapter = _adapter(ctx, kind)
    config = {**base, "model": ctx.vars["model"], "adapter": adapter, "steps": steps, **extra}
    config["lora"] = {**(base.get("lora") or {}), "rank": rank, "alpha": 2 * rank}
    config.pop("probes", None)
    if config.get("checkpoint_every"):
        config["checkpoint_every"] = min(config["checkpoint_every"], steps)
    if config.get("eval_every"):
        config["eval_every"] = min(config["eval_every"], steps)
    path = ctx.phase_dir / "train.yaml"
    atomic_write(path, yaml.safe_dump(config, sort_keys=True))
    ctx.current.update(
        adapter=adapter,
        config_file=str(path),
        data_kind=(config.get("data") or {}).get("kind", "sft"),
    )
    ctx.vars = {**ctx.vars, "peers_args": _peers_args(ctx)}


def _before_sft(ctx: Context) -> None:
    _write_config(ctx, "sft_config", "sft", ctx.vars["sft_steps"])


def _before_dpo(ctx: Context) -> None:
    base = yaml.safe_load(Path(ctx.vars["dpo_config"]).read_text()) or {}
    _write_config(
        ctx,
        "dpo_config",
        "dpo",
        ctx.vars["dpo_steps"],
        init_from=ctx.outputs["sft_export"]["adapter_dir"],
        dpo={**(base.get("dpo") or {}), "reference_adapter": ctx.outputs["sft"]["adapter"]},
    )


def _config_kind(kind: str):
    def check(ctx: Context) -> tuple[bool, str]:
        source = ctx.vars[f"{kind}_config"]
        data = (yaml.safe_load(Path(source).read_text()) or {}).get("data") or {}
        found = data.get("kind", "sft")
        return found == kind, f"{source}: data.kind {found} (step needs {kind})"

    return check


def _after_train(ctx: Context, record: dict) -> None:
    _watch_train(ctx)
    run = ctx.current.get("train_run_dir")
    if run:
        ctx.current["run_record_file"] = str(Path(run) / "run_record.json")


def _sft_trained(ctx: Context) -> tuple[bool, str]:
    return bool(ctx.outputs["sft"].get("adapter")), str(ctx.outputs["sft"].get("adapter"))


def _before_export(ctx: Context) -> None:
    ctx.vars = {**ctx.vars, "peers_args": _peers_args(ctx)}


def _after_export(ctx: Context, record: dict) -> None:
    weights = record_gather(ctx)
    if weights is not None:
        ctx.current["adapter_dir"] = str(weights.parent)


def _adapter_gathered(ctx: Context) -> tuple[bool, str]:
    path = ctx.current.get("adapter_file")
    return bool(path and Path(path).is_file()), str(path)


def _dpo_started_at_reference(ctx: Context) -> tuple[bool, str]:
    """The DPO run started from the SFT adapter's weights: step-0 margin ~ 0 vs the reference."""
    record = json.loads(Path(ctx.current["run_record_file"]).read_text())
    init = record.get("init_adapter") or {}
    first = (record.get("before") or {}).get("heldout_dpo") or (
        record.get("dpo", {}).get("steps") or [{}]
    )[0]
    margin = first.get("rewards/margins")
    ok = bool(init.get("sha256")) and margin is not None and abs(margin) <= START_TOLERANCE
    return ok, (
        f"init {init.get('source')} (sha256 {str(init.get('sha256'))[:16]}…), step-0 reward "
        f"margin {margin} vs reference {record.get('dpo', {}).get('reference')}"
    )


CHECKS = {
    "config_is_sft": _config_kind("sft"),
    "config_is_dpo": _config_kind("dpo"),
    "sft_trained": _sft_trained,
    "adapter_gathered": _adapter_gathered,
    "dpo_started_at_reference": _dpo_started_at_reference,
    "trainer_done": _trainer_done,
}
BEFORE = {
    "sft": _before_sft,
    "sft_export": _before_export,
    "dpo": _before_dpo,
    "dpo_export": _before_export,
}
AFTER = {
    "sft": _after_train,
    "sft_export": _after_export,
    "dpo": _after_train,
    "dpo_export": _after_export,
}
WATCH = {"sft": _watch_train, "dpo": _watch_train}
ON_FAIL = {"sft": _watch_train, "dpo": _watch_train}
