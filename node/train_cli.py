"""``node0 train --config FILE``: fine-tune a LoRA adapter across the swarm (one trainer peer).

Joins the DHT, opens the job on a route of stages, measures the held-out loss (and the probe
prompts) before, trains with progress, checkpoints (stages: adapter + optimizer; trainer: data
position), measures again after, and writes a run directory with a run record. ``--resume
RUN_DIR`` continues a run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a LoRA adapter across the swarm",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default="configs/train/smollm2-gastown.yaml",
        help="trainer YAML (see configs/train/)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="a previous train run directory to continue from its checkpoint",
    )
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        default=None,
        help="DHT multiaddrs (default: the config's, else the local swarm)",
    )
    parser.add_argument(
        "--swarm-file",
        type=Path,
        default=None,
        help="local swarm state file (default $NODE0_HOME/swarm/current.json)",
    )
    parser.add_argument(
        "--run-id", default=None, help="job name on the stages (shared by the trainers of one run)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="this trainer's data shard, e.g. 1/2 (overrides the config)",
    )
    parser.add_argument("--steps", type=int, default=None, help="total steps (overrides)")
    parser.add_argument("--no-probes", action="store_true", help="skip the probe prompts")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="run directories")
    parser.add_argument(
        "--credential",
        type=Path,
        default=None,
        help="this client's swarm credential (`node0 swarm invite NAME --role trainer`); "
        "default $NODE0_CREDENTIAL, else the local swarm's local-<role>.json",
    )
    parser.set_defaults(handler=run)


def averaging_mode_record(config) -> dict:
    """How the replicas average, for the run record: ``per_step``, or ``diloco`` with its
    local steps and outer optimizer."""
    avg = config.averaging
    record = {"mode": avg.mode, "compression": avg.compression, "replicas": config.replicas}
    if avg.mode == "diloco":
        record.update(
            local_steps=avg.local_steps,
            outer_optimizer="sgd-nesterov" if avg.outer_momentum > 0 else "sgd",
            outer_lr=avg.outer_lr,
            outer_momentum=avg.outer_momentum,
        )
    return record


def _averaging_mode_line(config) -> str:
    if config.replicas < 2:
        return ""
    avg = config.averaging
    if avg.mode == "diloco":
        return (
            f" (DiLoCo: {avg.local_steps} local steps, then outer Nesterov SGD lr "
            f"{avg.outer_lr:g}, momentum {avg.outer_momentum:g}; {avg.compression})"
        )
    return f" (every step; {avg.compression})"


def _resolved_config(args: argparse.Namespace):
    from base.config_loader import load_yaml_config
    from base.errors import ConfigError
    from training.config import TrainConfig

    config, sha = load_yaml_config(args.config, TrainConfig)
    update: dict = {}
    data_update: dict = {}
    if args.steps is not None:
        update["steps"] = args.steps
    if args.run_id is not None:
        update["run_id"] = args.run_id
    if args.shard is not None:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
        except ValueError as exc:
            raise ConfigError(f"--shard {args.shard!r}: expected I/N, e.g. 0/2") from exc
        data_update = {"shard_index": index, "shard_count": count}
    if args.resume is not None:
        checkpoint = _read_checkpoint(args.resume)
        if args.run_id is not None and args.run_id != checkpoint["run_id"]:
            raise ConfigError(
                f"--run-id {args.run_id} contradicts the resumed run's {checkpoint['run_id']}"
            )
        update["run_id"] = checkpoint["run_id"]
    if update or data_update:
        raw = config.model_dump(mode="json")
        raw.update(update)
        raw["data"] = {**raw["data"], **data_update}
        try:
            config = TrainConfig.model_validate(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid override: {exc}") from exc
    return config, sha


def _read_checkpoint(run_dir: Path) -> dict:
    from base.errors import CheckpointError
    from training.trainer import TRAINER_CHECKPOINT

    path = run_dir / TRAINER_CHECKPOINT
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot resume from {run_dir}: {path} is missing or unreadable ({exc})"
        ) from exc
    if data.get("format") != "node0-trainer-checkpoint/1":
        raise CheckpointError(f"{path} is not a node0 trainer checkpoint")
    return data


def run(args: argparse.Namespace) -> int:
    import secrets
    import shutil
    import time

    from security.active import use_credential

    if args.credential:
        use_credential(args.credential)

    from base.banner import print_banner, status
    from base.errors import CheckpointError
    from base.swarm_view import initial_peers_from
    from dataload import build_loaders
    from dataload.probes import load_probes
    from inference.swarm_client import SwarmClient
    from models.catalog import CATALOG, resolve_model_dir
    from provenance import create_run_dir
    from training.probe_eval import probe_report
    from training.trainer import REFERENCE_CACHE, SwarmTrainer

    config, sha = _resolved_config(args)
    checkpoint = _read_checkpoint(args.resume) if args.resume is not None else None
    run_id = config.run_id or f"lora-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    peers = args.initial_peers or config.initial_peers or initial_peers_from(args.swarm_file)
    print_banner(
        "train",
        args.config,
        sha,
        [
            f"model: {config.model}; adapter {config.adapter!r} (rank {config.lora.rank}, alpha "
            f"{config.lora.alpha:g}, {', '.join(config.lora.target_modules)})",
            f"run: {run_id}" + (f" (resuming {args.resume})" if args.resume else ""),
            f"steps: {config.steps}, batch {config.data.batch_size}, micro-batch "
            f"{config.micro_batch_size or config.data.batch_size}, lr {config.learning_rate:g}, "
            f"clip {config.max_grad_norm:g}",
            f"data: shard {config.data.shard_index}/{config.data.shard_count} of "
            + ", ".join(str(p) for p in config.data.train),
            f"replicas per stage averaging: {config.replicas}" + _averaging_mode_line(config),
            *(
                [
                    f"objective: DPO, beta {config.dpo.beta:g}, label smoothing "
                    f"{config.dpo.label_smoothing:g}, reference "
                    f"{config.dpo.reference_adapter or 'the base with adapters off'}"
                ]
                if config.data.kind == "dpo"
                else []
            ),
            *([f"init: the adapter starts from {config.init_from}"] if config.init_from else []),
        ],
    )
    if config.model in CATALOG:
        from models.assets import prepare_model

        status("prepare", f"{config.model} tokenizer")
        prepare_model(config.model)
    model_dir = resolve_model_dir(config.model)
    init = None
    if config.init_from is not None:
        from training.init_adapter import resolve_init_adapter

        init = resolve_init_adapter(
            config.init_from, model=config.model, model_dir=model_dir, lora=config.lora
        )
        status("init", f"{config.init_from}: adapter sha256 {init.sha256[:16]}…")
    loaders = build_loaders(config.data, model_dir=model_dir)
    train = loaders.train
    run = create_run_dir(
        args.runs_dir,
        "train",
        config=config.model_dump(mode="json"),
        config_path=args.config,
        seeds={"data": config.data.seed, "lora_init": config.lora.init_seed},
    )
    run.set(
        "job",
        {
            "run_id": run_id,
            "resumed_from": str(args.resume) if args.resume else None,
            "initial_peers": peers,
        },
    )
    if config.replicas > 1:
        run.set("averaging_mode", averaging_mode_record(config))
    if init is not None:
        run.set("init_adapter", init.record())
    run.set(
        "data",
        {
            "train": train.describe(),
            "order_hash_epoch0": train.order_hash(0),
            "heldout": loaders.heldout.describe() if loaders.heldout else None,
        },
    )
    status(
        "data",
        f"{len(train.items)} examples, {train.num_batches(0)} batches/epoch, order "
        f"sha256 {train.order_hash(0)[:16]}",
    )
    if args.resume is not None and (args.resume / REFERENCE_CACHE).is_file():
        # a resumed DPO run reuses the reference log-probs computed so far (checked against
        # their provenance when the route is open)
        shutil.copyfile(args.resume / REFERENCE_CACHE, run.path / REFERENCE_CACHE)
    client = SwarmClient(config.model, peers)
    trainer = SwarmTrainer(
        config,
        run=run,
        loaders=loaders,
        run_id=run_id,
        records_fn=client.records,
        init=init,
        load_init=_load_init(config),
        resuming=checkpoint is not None,
    )
    try:
        client.wait_for_route()
        trainer.set_state("ready", f"run {run_id}")
        step = trainer.connect()
        saved_scale = (checkpoint or {}).get("loss_scaler")
        if saved_scale and trainer.scaler is not None:  # a resumed float16 run keeps its scale
            trainer.scaler.load_state_dict(saved_scale)
        if checkpoint is not None and step < int(checkpoint["step"]):
            raise CheckpointError(
                f"the stages are at step {step} but the trainer checkpoint "
                f"is at step {checkpoint['step']}: a stage lost its checkpoint"
            )
        if checkpoint is None and step > 0:
            status("resume", f"the stages already hold {step} steps of run {run_id}")
        probes = load_probes(config.probes) if config.probes and not args.no_probes else []
        probe_kw = dict(
            adapters=(config.adapter,),
            mode=config.data.prompt_mode,
            eos_id=loaders.tokenizer_info.eos_id,
            max_new_tokens=config.probe_max_new_tokens,
        )
        before = {"step": step, "heldout_loss": trainer.heldout_loss()}
        if trainer.dpo:
            before["heldout_dpo"] = trainer.state.heldout_dpo.get(step)
        if probes:
            status("probes", f"{len(probes)} prompts before training")
            before["probes"] = probe_report(client, loaders.tokenizer, probes, **probe_kw)
        _say_eval(status, "before", before)
        state = trainer.train(step)
        after = {"step": state.step, "heldout_loss": trainer.heldout_loss()}
        if trainer.dpo:
            after["heldout_dpo"] = state.heldout_dpo.get(state.step)
        if probes:
            status("probes", f"{len(probes)} prompts after training")
            after["probes"] = probe_report(client, loaders.tokenizer, probes, **probe_kw)
        _say_eval(status, "after", after)
        run.add_artifact(run.path / "trainer_checkpoint.json")
        if (run.path / REFERENCE_CACHE).is_file():
            run.add_artifact(run.path / REFERENCE_CACHE)
        trainer.set_state(
            "done", f"{state.step} steps, {state.skipped} skipped, {state.reroutes} reroute(s)"
        )
        run.finish(
            "done",
            before=before,
            after=after,
            losses=state.losses,
            heldout_during=state.heldout,
            skipped_steps=state.skipped,
            reroutes=state.reroutes,
            trainer_id=trainer.trainer_id,
            averaging=state.averaging,
            **({"dpo": trainer.dpo_record()} if trainer.dpo else {}),
            stages=[
                {"span": [c.start, c.end], "endpoint": c.endpoint, "peer_id": c.peer_id}
                for c in trainer.stages
            ],
        )
        print(
            json.dumps(
                {
                    "run_dir": str(run.path),
                    "run_id": run_id,
                    "steps": state.step,
                    "loss_first": state.losses[0] if state.losses else None,
                    "loss_last": state.losses[-1] if state.losses else None,
                    "heldout_before": before["heldout_loss"],
                    "heldout_after": after["heldout_loss"],
                    "probes_before": before.get("probes", {}).get("shows_convention"),
                    "probes_after": after.get("probes", {}).get("shows_convention"),
                    "probes": len(probes),
                    "adapter": config.adapter,
                    **(_dpo_summary(before, after, state) if trainer.dpo else {}),
                }
            )
        )
        return 0
    except BaseException as exc:
        trainer.set_state("failed", str(exc)[:300])
        run.finish("failed", error=str(exc), losses=trainer.state.losses)
        raise
    finally:
        trainer.close_route()
        client.close()


def _load_init(config):
    """Attaches the init adapter under ``config.adapter`` on every daemon of the model."""

    def load(records, init) -> int:
        from inference.registry_models import RegisteredModel, load_on_swarm

        named = RegisteredModel(init.source, config.model, config.adapter, init.sha256, init.path)
        return load_on_swarm(records, named)

    return load


def _dpo_summary(before: dict, after: dict, state) -> dict:
    def accuracy(result: dict):
        return (result.get("heldout_dpo") or {}).get("rewards/accuracies")

    return {
        "objective": "dpo",
        "heldout_accuracy_before": accuracy(before),
        "heldout_accuracy_after": accuracy(after),
        "heldout_logp_accuracy_before": (before.get("heldout_dpo") or {}).get("logp_accuracy"),
        "heldout_logp_accuracy_after": (after.get("heldout_dpo") or {}).get("logp_accuracy"),
        "margins": [m["rewards/margins"] for m in state.dpo],
    }


def _say_eval(status, when: str, result: dict) -> None:
    parts = []
    if result.get("heldout_loss") is not None:
        parts.append(f"held-out loss {result['heldout_loss']:.4f}")
    if result.get("heldout_dpo"):
        d = result["heldout_dpo"]
        parts.append(
            f"preference accuracy {d['rewards/accuracies']:.2f} "
            f"(margin {d['rewards/margins']:+.4f}; log π(chosen) > log π(rejected) on "
            f"{d['logp_accuracy']:.2f} of {d['pairs']} pairs)"
        )
    if "probes" in result:
        p = result["probes"]
        parts.append(f"probes showing the convention {p['shows_convention']}/{p['probes']}")
    status("eval", f"{when} (step {result['step']}): " + ", ".join(parts or ["nothing to do"]))
