"""``node0 gather``: pull every stage of a model from the swarm and export it, verified.

Steps, each gating the next:

1. **route**: the model's stage records from the DHT; the chain of spans covering every layer
   once (:func:`base.routing.plan_route`; a missing stage fails here, naming its layers),
   with every online replica of each span as a fallback;
2. **pull**: one ``PullWeights`` stream per stage, all stages at once; each chunk is checked
   against the stage's header and each tensor against its sha256 as it completes
   (:mod:`checkpoint_gather.weights_client`). A replica that dies or stalls is replaced by the
   next replica of its span; with none left the job fails (exit 7). As soon as every header is
   in, coverage is proven over the declared manifests — before the bulk of the bytes arrives;
3. **merge** (``--merge-adapters``): the named adapters folded into the base weights
   (:mod:`checkpoint_gather.merge`; in float32, so the export rounds a merged weight once);
4. **export**: :func:`checkpoint_gather.export.export_checkpoint` proves coverage again over what
   arrived, verifies every tensor, writes HF (in ``--dtype``; by default the dtype the stages
   hold, :mod:`checkpoint_gather.dtypes`) / GGUF / PEFT into a temporary directory, renames it
   into place and completes the run record.

Nothing is written to ``out_dir`` unless every step succeeded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from base.dht_records import StageRecord
from base.errors import CheckpointError, PeerFailureError, RequestError, SwarmError
from base.precision import torch_dtype
from base.refusals import reason_of
from checkpoint_gather.coverage import check_coverage, check_layer_coverage
from checkpoint_gather.dtypes import held_dtypes, resolve_export_dtype
from checkpoint_gather.export import ExportResult, export_checkpoint
from checkpoint_gather.hf_export import DEFAULT_MAX_SHARD_BYTES, export_config
from checkpoint_gather.merge import merge_adapters
from checkpoint_gather.peft_export import StageAdapters
from checkpoint_gather.sources import SourceManifest, TensorEntry, dtype_name, tensor_sha256
from checkpoint_gather.tokenizer_prep import TokenizerPrep
from checkpoint_gather.weights_client import PulledStage, PullTarget, StagePull
from models.catalog import CATALOG
from provenance import RunDir, sha256_json
from security.active import dht_authorizer
from security.credentials import Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatherOptions:
    """What to gather and write.

    Attributes:
        model: the model's name in the swarm (catalog name or the daemons' local path).
        out_dir: the job's output directory; must not exist.
        merge_adapters: adapters folded into the exported base weights, stacked in this order.
        adapters_only: write only a PEFT adapter (``adapter``), no base weights.
        adapter: with ``adapters_only``, the adapter; None = the one adapter the stages hold.
        hf: write the Hugging Face directory.
        dtype: the Hugging Face weights' dtype (``float32``, ``bfloat16``, ``float16``);
            None: the dtype the stages hold if they all hold one, else float32.
        gguf_types: GGUF files to write (``f32``, ``f16``, ``bf16``, ``q8_0``).
        tokenizer_dir: tokenizer files to ship; None = the model's local directory.
        chunk_bytes: bytes per streamed chunk (0 = the stage's default, 1 MiB).
        idle_timeout: a stream silent this long (seconds) counts as a failed peer.
        route_timeout: how long announcements may take to cover every layer.
        max_shard_bytes: Hugging Face shard size limit.
        durable: fsync the output before publishing it (survives a power loss); the output
            is atomic for any failure of the gather process either way.
    """

    model: str
    out_dir: Path
    merge_adapters: tuple[str, ...] = ()
    adapters_only: bool = False
    adapter: str | None = None
    hf: bool = True
    dtype: str | None = None
    gguf_types: tuple[str, ...] = ("f32",)
    tokenizer_dir: Path | None = None
    chunk_bytes: int = 0
    idle_timeout: float = 60.0
    route_timeout: float = 10.0
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    durable: bool = False

    def __post_init__(self):
        if self.adapters_only and self.merge_adapters:
            raise RequestError("--adapters-only and --merge-adapters exclude each other")
        if self.adapter and not self.adapters_only:
            raise RequestError("--adapter names the adapter of an --adapters-only export")
        if not self.adapters_only and not self.hf and not self.gguf_types:
            raise RequestError("nothing to write: no Hugging Face and no GGUF output asked")
        if len(set(self.merge_adapters)) != len(self.merge_adapters):
            raise RequestError(f"--merge-adapters names one twice: {list(self.merge_adapters)}")
        if self.dtype is not None:
            torch_dtype(self.dtype)  # ConfigError for a name that is no dtype
            if self.adapters_only or not self.hf:
                raise RequestError(
                    "--dtype sets the Hugging Face weights' dtype, and this gather writes none "
                    "(an adapter keeps its own dtype; GGUF types are chosen with --gguf)"
                )


@dataclass(frozen=True)
class StagePlan:
    """One span of the route and its replicas, in the order they are tried."""

    start: int
    end: int
    replicas: tuple[PullTarget, ...]


@dataclass
class GatherResult:
    export: ExportResult
    stages: list[PulledStage] = field(default_factory=list)
    adapters: tuple[str, ...] = ()  # merged, or the one exported alone
    seconds: dict[str, float] = field(default_factory=dict)  # per phase: route, pull, export

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.stages)


def plan_stages(
    records: Sequence[StageRecord], model: str, *, need_adapters: Sequence[str] = ()
) -> list[StagePlan]:
    """The route's spans, each with all its online replicas; those announcing every adapter in
    ``need_adapters`` first (an adapter attached by a training job is held but not announced,
    so the others stay candidates: a stage refuses an adapter it does not hold).

    Raises:
        SwarmError: some layers are served by no online peer (named).
    """
    from base.routing import plan_route, replicas_for

    need = set(need_adapters)
    plans = []
    for hop in plan_route(records, model):
        replicas = [hop] + replicas_for(
            records, hop.span, model, exclude_endpoints=frozenset({hop.endpoint})
        )
        replicas.sort(key=lambda r: not need <= set(r.adapters))  # stable: load order kept
        plans.append(
            StagePlan(
                hop.start,
                hop.end,
                tuple(PullTarget(r.endpoint, r.peer_id, r.start, r.end) for r in replicas),
            )
        )
    return plans


def choose_adapter(
    records: Sequence[StageRecord], plans: Sequence[StagePlan], requested: str | None
) -> str:
    """The adapter of an ``--adapters-only`` export: the named one, or the only one held."""
    if requested:
        return requested
    spans = {(p.start, p.end) for p in plans}
    held = [set(r.adapters) for r in records if r.span in spans and r.state == "online"]
    common = sorted(set.intersection(*held)) if held else []
    if len(common) == 1:
        return common[0]
    if not common:
        raise RequestError(
            "the stages hold no adapter to export",
            hint="load one in the daemons' config (`adapters:`) or train one",
        )
    raise RequestError(
        f"the stages hold several adapters ({', '.join(common)}); name one with --adapter"
    )


def _header_manifest(pull: StagePull, header) -> SourceManifest:
    t = pull.target
    return SourceManifest(
        t.source_id,
        t.start,
        t.end,
        {
            e.key: TensorEntry(tuple(e.shape), e.dtype, e.sha256)
            for e in header.tensors
            if not e.adapter
        },
        peer=t.peer_id,
    )


class _Puller:
    """Pull every planned stage in parallel, with replica fallback and an idle watchdog."""

    def __init__(
        self,
        plans: Sequence[StagePlan],
        model: str,
        *,
        base: bool,
        adapters: tuple[str, ...],
        chunk_bytes: int,
        idle_timeout: float,
        on_all_headers: Callable[[list], None],
        progress=None,
    ):
        self.plans = list(plans)
        self.model = model
        self.base = base
        self.adapters = adapters
        self.chunk_bytes = chunk_bytes
        self.idle_timeout = idle_timeout
        self.on_all_headers = on_all_headers
        self.progress = progress
        self._lock = threading.Lock()
        self._active: dict[tuple[int, int], StagePull] = {}
        self._headers: dict[tuple[int, int], tuple[StagePull, object]] = {}
        self._tasks: dict[int, object] = {}
        self._aborted: str | None = None

    def _on_header(self, pull: StagePull, header) -> None:
        with self._lock:
            self._headers[(pull.target.start, pull.target.end)] = (pull, header)
        if self.progress is not None:
            t = pull.target
            self._tasks[id(pull)] = self.progress.add_task(
                f"layers [{t.start}, {t.end}) from {t.endpoint}", total=header.total_bytes
            )

    def _on_bytes(self, pull: StagePull, n: int) -> None:
        task = self._tasks.get(id(pull))
        if task is not None:
            self.progress.advance(task, n)

    def _pull_span(self, plan: StagePlan) -> PulledStage:
        failures, refusals = [], []
        for target in plan.replicas:
            pull = StagePull(
                target,
                self.model,
                base=self.base,
                adapters=self.adapters,
                chunk_bytes=self.chunk_bytes,
                on_header=self._on_header,
                on_bytes=self._on_bytes,
            )
            with self._lock:
                if self._aborted is not None:
                    raise PeerFailureError(
                        f"layers [{plan.start}, {plan.end}): not pulled ({self._aborted})"
                    )
                self._active[(plan.start, plan.end)] = pull
            try:
                return pull.run()
            except (RequestError, SwarmError) as exc:
                reason = reason_of(exc)
                if reason is None or not reason.elsewhere:  # every replica would refuse it
                    raise
                refusals.append(exc)  # e.g. this replica lacks the adapter: try the next
                continue
            except PeerFailureError as exc:
                with self._lock:
                    if self._aborted is not None:
                        raise
                    self._headers.pop((plan.start, plan.end), None)
                log.warning("%s", exc)
                failures.append(str(exc))
                task = self._tasks.pop(id(pull), None)
                if task is not None:  # the next replica starts a bar of its own
                    self.progress.update(task, visible=False)
        tried = len(plan.replicas)
        if refusals and not failures:  # the first refusal's family, and reason (reason_of)
            raise type(refusals[0])("; ".join(map(str, refusals))) from refusals[0]
        failures += map(str, refusals)
        raise PeerFailureError(
            f"layers [{plan.start}, {plan.end}) could not be pulled from any of its {tried} "
            f"replica(s): " + "; ".join(failures),
            hint="restart the failed peer (or start another one serving these layers) and "
            "gather again; nothing was written",
        )

    def _abort(self, reason: str) -> None:
        with self._lock:
            self._aborted = reason
            active = list(self._active.values())
        for pull in active:
            pull.cancel(reason)

    def run(self) -> list[PulledStage]:
        headers_checked = False
        with concurrent.futures.ThreadPoolExecutor(
            len(self.plans), thread_name_prefix="pull"
        ) as pool:
            futures = {pool.submit(self._pull_span, plan): plan for plan in self.plans}
            try:
                pending = set(futures)
                while pending:
                    done, pending = concurrent.futures.wait(
                        pending, timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION
                    )
                    for future in done:
                        future.result()  # raises the stage's error
                    if not headers_checked:
                        with self._lock:
                            headers = [self._headers.get((p.start, p.end)) for p in self.plans]
                        if None not in headers:
                            self.on_all_headers(headers)
                            headers_checked = True
                    now = time.monotonic()
                    with self._lock:
                        stale = [
                            p
                            for p in self._active.values()
                            if now - p.last_activity > self.idle_timeout
                        ]
                    for pull in stale:
                        pull.cancel(f"no data for {self.idle_timeout:g} s")
            except BaseException as exc:
                self._abort(f"the gather was aborted: {str(exc).splitlines()[0]}")
                raise
        return [future.result() for future in futures]


def _check_configs(stages: Sequence[PulledStage]) -> dict:
    first = stages[0]
    for stage in stages[1:]:
        if stage.config != first.config:
            raise CheckpointError(
                f"stages disagree on the model config: "
                f"{first.target.source_id} vs {stage.target.source_id}"
            )
    return first.config


def _adapter_settings(stages: Sequence[PulledStage], name: str):
    settings = {s.target.source_id: s.adapter_settings.get(name) for s in stages}
    distinct = {v.fingerprint() if v else None for v in settings.values()}
    if len(distinct) != 1 or None in distinct:
        raise CheckpointError(
            f"stages disagree on adapter {name!r}'s LoRA settings: "
            + ", ".join(f"{k}: {v.model_dump() if v else 'absent'}" for k, v in settings.items())
        )
    return next(iter(settings.values()))


def _merged_source(stage: PulledStage, adapters: Sequence[str], settings: dict):
    """The stage's base weights with ``adapters`` folded in, and their new manifest."""
    declared = stage.base
    changed = merge_adapters(
        stage.base_tensors, [(settings[a], stage.adapters[a]) for a in adapters]
    )
    entries = dict(declared.tensors)
    for name in changed:  # merged in float32 (merge_adapters)
        tensor = stage.base_tensors[name]
        entries[name] = TensorEntry(
            entries[name].shape, dtype_name(tensor.dtype), tensor_sha256(tensor)
        )
    extra = {
        **declared.extra,
        "merged_adapters": list(adapters),
        "pulled_tensors_sha256": sha256_json(
            {n: e.to_json() for n, e in sorted(declared.tensors.items())}
        ),
        "pulled_adapter_sha256": {a: stage.adapter_digests[a] for a in adapters},
    }
    manifest = SourceManifest(
        declared.source_id, declared.start, declared.end, entries, peer=declared.peer, extra=extra
    )
    return manifest, stage.base_tensors


@contextlib.contextmanager
def _recorded(run: RunDir | None):
    """Mark ``run`` failed (with the error's first line) if the body raises before the export
    completed it."""
    try:
        yield
    except BaseException as exc:
        if run is not None and run.record.get("status") == "running":
            run.finish("failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise


def _catalog_model(options: GatherOptions) -> str | None:
    return options.model if options.model in CATALOG else None


def _tokenizer_prep(options: GatherOptions, tokenizer_dir) -> TokenizerPrep | None:
    """Start the export's tokenizer work in the background (none for an adapters-only job)."""
    if options.adapters_only:
        return None
    return TokenizerPrep(
        model=_catalog_model(options),
        tokenizer_dir=tokenizer_dir,
        hf=options.hf,
        gguf=bool(options.gguf_types),
    )


def gather_stages(
    options: GatherOptions,
    plans: Sequence[StagePlan],
    *,
    tokenizer_dir: str | Path,
    generation_config=None,
    run: RunDir | None = None,
    progress=None,
    adapter: str | None = None,
    prep: TokenizerPrep | None = None,
) -> GatherResult:
    """Pull ``plans`` and export them (steps 2–4; the DHT-free part of :func:`gather`).

    Args:
        options: what to gather and write.
        plans: one entry per stage of the route, replicas in the order to try.
        tokenizer_dir: the tokenizer files shipped with the export.
        generation_config: for the Hugging Face export (path, dict or None).
        run: an open run record: completed by the export, or marked failed with the error.
        progress: a rich ``Progress`` (anything with ``add_task``/``advance``/``update``),
            fed with the bytes pulled per stage and shown while pulling.
        adapter: with ``options.adapters_only``, the adapter to pull.
        prep: tokenizer work already started (:class:`checkpoint_gather.tokenizer_prep.
            TokenizerPrep`); default: started here, to run while the stages are pulled.

    Raises:
        PeerFailureError: a stage could not be pulled from any of its replicas.
        CheckpointError: corrupt or contradictory data, coverage, or the output exists.
        RequestError: a stage refused the pull (wrong model), or every replica of it did
            (unknown adapter); ``base.refusals.reason_of`` gives the stage's reason.
        SwarmError: no replica of a stage hosts the layers it announced.
    """
    with _recorded(run):
        return _gather_stages(
            options,
            plans,
            tokenizer_dir=tokenizer_dir,
            generation_config=generation_config,
            run=run,
            progress=progress,
            adapter=adapter,
            prep=prep,
        )


def _gather_stages(
    options: GatherOptions,
    plans: Sequence[StagePlan],
    *,
    tokenizer_dir,
    generation_config,
    run,
    progress,
    adapter,
    prep,
) -> GatherResult:
    out_dir = Path(options.out_dir)
    if out_dir.exists():
        raise CheckpointError(
            f"output {out_dir} already exists; refusing to overwrite it",
            hint="choose a new --out or remove the old one yourself",
        )
    wanted = (adapter,) if options.adapters_only else tuple(options.merge_adapters)

    if prep is None:  # without a route phase: during the pull
        prep = _tokenizer_prep(options, tokenizer_dir)

    def prove(headers) -> None:
        configs = {json.dumps(json.loads(h.config_json), sort_keys=True) for _, h in headers}
        if len(configs) != 1:
            raise CheckpointError(
                "stages disagree on the model config; they serve different models under one name"
            )
        config = export_config(json.loads(headers[0][1].config_json))
        manifests = [_header_manifest(pull, header) for pull, header in headers]
        if options.adapters_only:
            check_layer_coverage(config.num_hidden_layers, manifests)
        else:
            check_coverage(config, manifests)
        log.info(
            "coverage proven over the stages' manifests: %d layers from %d stages",
            config.num_hidden_layers,
            len(manifests),
        )

    puller = _Puller(
        plans,
        options.model,
        base=not options.adapters_only,
        adapters=wanted,
        chunk_bytes=options.chunk_bytes,
        idle_timeout=options.idle_timeout,
        on_all_headers=prove,
        progress=progress,
    )
    started = time.monotonic()
    # a rich Progress is shown for the pull only (the bars end before the export logs)
    live = progress if hasattr(progress, "__enter__") else contextlib.nullcontext()
    with live:
        stages = puller.run()
    return _export(
        options,
        stages,
        out_dir,
        wanted,
        tokenizer_dir=tokenizer_dir,
        generation_config=generation_config,
        run=run,
        started=started,
        prep=prep,
    )


def _export(
    options: GatherOptions,
    stages: list[PulledStage],
    out_dir: Path,
    wanted: tuple[str, ...],
    *,
    tokenizer_dir,
    generation_config,
    run,
    started: float,
    prep: TokenizerPrep | None,
) -> GatherResult:
    seconds = {"pull": time.monotonic() - started}
    log.info(
        "pulled %d stages, %.1f MB in %.1f s",
        len(stages),
        sum(s.bytes for s in stages) / 1e6,
        seconds["pull"],
    )
    started = time.monotonic()
    config = export_config(_check_configs(stages))
    settings = {name: _adapter_settings(stages, name) for name in wanted}
    # chosen over what the stages hold, before a merge turns merged weights into float32
    held = held_dtypes(s.base for s in stages if s.base is not None)
    dtype = resolve_export_dtype(options.dtype, held)
    provenance = {
        "gathered_from": "swarm",
        "swarm_model": options.model,
        "stages": [
            {
                "source_id": s.target.source_id,
                "peer": s.target.peer_id,
                "endpoint": s.target.endpoint,
                "layers": [s.target.start, s.target.end],
                "bytes": s.bytes,
                "seconds": round(s.seconds, 3),
                "node0_version": s.node0_version,
            }
            for s in stages
        ],
        "merged_adapters": list(options.merge_adapters),
        "adapter_settings": {n: s.model_dump(mode="json") for n, s in settings.items()},
    }
    catalog_name = _catalog_model(options)
    common = {
        "tokenizer_dir": tokenizer_dir,
        "model": catalog_name,
        "run": run,
        "provenance": provenance,
        "base_model": options.model,
        "durable": options.durable,
    }
    if options.adapters_only:
        adapter = wanted[0]
        adapters = [
            StageAdapters(s.target.source_id, s.target.start, s.target.end, s.adapters[adapter])
            for s in stages
        ]
        export = export_checkpoint(
            out_dir,
            config,
            [],
            hf=False,
            gguf_types=(),
            adapters=adapters,
            lora_settings=settings[adapter],
            **common,
        )
    else:
        if options.merge_adapters:
            sources = [_merged_source(s, options.merge_adapters, settings) for s in stages]
        else:
            sources = [(s.base, s.base_tensors) for s in stages]
        export = export_checkpoint(
            out_dir,
            config,
            sources,
            hf=options.hf,
            gguf_types=options.gguf_types,
            verified=True,
            generation_config=generation_config,
            gguf_tokenizer=functools.partial(prep.gguf_fields, config.vocab_size),
            tokenizer_check=prep.hf_check() if options.hf else None,
            max_shard_bytes=options.max_shard_bytes,
            dtype=dtype,
            **common,
        )
    seconds["export"] = time.monotonic() - started
    return GatherResult(export=export, stages=stages, adapters=wanted, seconds=seconds)


def gather(
    options: GatherOptions, *, initial_peers: list[str], run: RunDir | None = None, progress=None
) -> GatherResult:
    """Find the model's stages through the DHT, pull them all and export (module docstring).

    Raises:
        SwarmError: no DHT peer, or some layers are served by no online peer.
        and everything :func:`gather_stages` raises.
    """
    with _recorded(run):
        return _gather(options, initial_peers=initial_peers, run=run, progress=progress)


def _gather(
    options: GatherOptions, *, initial_peers: list[str], run: RunDir | None, progress
) -> GatherResult:
    from base.swarm_view import SwarmView
    from models.catalog import resolve_model_dir

    if Path(options.out_dir).exists():
        raise CheckpointError(
            f"output {options.out_dir} already exists; refusing to overwrite it",
            hint="choose a new --out or remove the old one",
        )
    started = time.monotonic()
    # a private swarm admits this DHT peer with the process's credential (security.active)
    client = SwarmView(options.model, initial_peers, authorizer=dht_authorizer(Role.GATHERER))
    model_dir = resolve_model_dir(options.model)
    # started once the DHT child is forked (threads never fork); during the join the CPU is
    # mostly idle, during the pull it would compete with it
    prep = _tokenizer_prep(options, options.tokenizer_dir or model_dir)
    try:
        client.wait_for_route(options.route_timeout)
        records = client.records()
    finally:
        client.close()
    plans = plan_stages(records, options.model, need_adapters=options.merge_adapters)
    adapter = None
    if options.adapters_only:
        adapter = choose_adapter(records, plans, options.adapter)
        plans = plan_stages(records, options.model, need_adapters=(adapter,))
    log.info("route: %s", " -> ".join(f"[{p.start}, {p.end}) x{len(p.replicas)}" for p in plans))
    tokenizer_dir = options.tokenizer_dir or model_dir
    generation = model_dir / "generation_config.json"
    route_seconds = time.monotonic() - started
    result = gather_stages(
        options,
        plans,
        tokenizer_dir=tokenizer_dir,
        generation_config=generation if generation.is_file() else None,
        run=run,
        progress=progress,
        adapter=adapter,
        prep=prep,
    )
    result.seconds = {"route": route_seconds, **result.seconds}
    return result
