"""One export job: verified sources in, a complete output directory (or nothing) out.

``export_checkpoint`` is what ``node0 gather`` runs once the stages' tensors have arrived (and
what an offline export from local layer ranges runs): the steps are fixed and each one gates the
next —

1. coverage proof over the manifests (:func:`checkpoint_gather.coverage.check_coverage`);
2. every received tensor checked against its source's declared shape/dtype/sha256;
3. the state dict assembled by the coverage plan (a tied head copy dropped);
4. the Hugging Face export's dtype chosen (:mod:`checkpoint_gather.dtypes`: asked, or the one
   the sources hold, float32 if they disagree);
5. in a temporary sibling of ``out_dir``: ``hf/`` (Hugging Face), ``<name>-<type>.gguf`` per
   requested type, ``adapter/`` (PEFT), ``manifest.json``; then one rename publishes the lot;
6. the run record lists sources, the dtype and every output file with sha256.

With ``adapters`` the per-stage LoRA adapters are written too, as one PEFT adapter (``adapter/``),
inside the same atomic output; an adapters-only job needs no base sources.

A failure at any step leaves no ``out_dir`` and marks the run record failed.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from base.atomic import atomic_dir
from base.errors import Node0Error
from checkpoint_gather.coverage import CoveragePlan, check_coverage
from checkpoint_gather.dtypes import ExportDType, held_dtypes, resolve_export_dtype
from checkpoint_gather.gguf_export import export_gguf
from checkpoint_gather.gguf_tokenizer import Fields, tokenizer_fields
from checkpoint_gather.hf_export import (
    DEFAULT_MAX_SHARD_BYTES,
    TokenizerCheck,
    export_config,
    export_hf,
)
from checkpoint_gather.manifest import build_manifest, record_outputs, write_manifest
from checkpoint_gather.peft_export import StageAdapters, export_peft_adapter
from checkpoint_gather.sources import SourceManifest, verify_tensors
from provenance import RunDir

log = logging.getLogger(__name__)

Source = tuple[SourceManifest, Mapping[str, torch.Tensor]]
EXPORT_WORKERS = 2  # output writers running at once


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    hf_dir: Path | None
    gguf_files: dict[str, Path]
    adapter_dir: Path | None
    manifest: Path
    plan: CoveragePlan | None  # None for an adapters-only job
    dtype: str | None = None  # the Hugging Face weights' dtype (None: no hf/)


class _Once:
    """Call ``fn`` once, from whichever thread asks first; later callers get its result (or
    its error)."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False
        self._value = None

    def __call__(self) -> Any:
        with self._lock:
            if not self._done:
                try:
                    self._value = self._fn()
                except BaseException as exc:  # every caller sees the same failure
                    self._value = exc
                self._done = True
        if isinstance(self._value, BaseException):
            raise self._value
        return self._value


def run_concurrently(
    jobs: Mapping[str, Callable[[], Path]], workers: int = EXPORT_WORKERS
) -> dict[str, Path]:
    """Run the output writers at once (HF safetensors and each GGUF type); ``{label: path}``.

    The heavy parts — safetensors and GGUF tensor writes, sha256, fsync — release the GIL, so
    two writers use two cores. The first failure is raised once every job has stopped (the
    caller's temporary directory is then removed with whatever the others wrote).
    """
    if len(jobs) <= 1:
        return {label: job() for label, job in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(
        min(workers, len(jobs)), thread_name_prefix="export"
    ) as pool:
        futures = {label: pool.submit(job) for label, job in jobs.items()}
        concurrent.futures.wait(futures.values())
    return {label: future.result() for label, future in futures.items()}


def assemble_state(plan: CoveragePlan, sources: Sequence[Source]) -> dict[str, torch.Tensor]:
    """The model's state dict, each tensor taken from the source the plan names."""
    by_id = {manifest.source_id: state for manifest, state in sources}
    return {name: by_id[source_id][name] for name, source_id in sorted(plan.owner.items())}


def export_checkpoint(
    out_dir: str | Path,
    config,
    sources: Sequence[Source],
    *,
    tokenizer_dir: str | Path,
    model: str | None = None,
    generation_config=None,
    hf: bool = True,
    gguf_types: Sequence[str] = ("f32",),
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    adapters: Sequence[StageAdapters] = (),
    lora_settings=None,
    base_model: str | None = None,
    run: RunDir | None = None,
    provenance: Mapping[str, Any] | None = None,
    verified: bool = False,
    gguf_tokenizer: Callable[[], Fields] | None = None,
    tokenizer_check: TokenizerCheck | None = None,
    durable: bool = False,
    dtype: str | ExportDType | None = None,
) -> ExportResult:
    """Verify ``sources`` and write the requested formats into ``out_dir`` atomically.

    Args:
        out_dir: the job's output directory; must not exist.
        config: the model's config.
        sources: ``(manifest, received tensors)`` per source (stage).
        tokenizer_dir: the model's Hugging Face tokenizer files.
        model: catalog name; its source GGUF's tokenizer fields are embedded in GGUF outputs.
        generation_config: for the HF export (default: derived from the config).
        hf: write the Hugging Face directory.
        gguf_types: GGUF files to write (``f32``, ``f16``, ``bf16``, ``q8_0``).
        max_shard_bytes: HF shard size limit.
        adapters: per-stage LoRA adapters to write as one PEFT adapter (``adapter/``);
            with ``hf=False`` and no ``gguf_types`` the job is adapters-only and ``sources``
            may be empty.
        lora_settings: the adapters' :class:`lora.LoraSettings` (required with ``adapters``).
        base_model: recorded as the adapter's ``base_model_name_or_path``.
        run: an open run record; the outputs are registered in it and it is finished.
        provenance: extra provenance stored in every output.
        verified: every tensor was already checked against its source's sha256 as it arrived
            (``node0 gather`` does); skips the second hashing pass of step 2.
        gguf_tokenizer: returns the GGUF ``tokenizer.*`` fields (``node0 gather`` reads them
            while the stages are pulled); default: :func:`checkpoint_gather.gguf_tokenizer.
            tokenizer_fields` of ``model`` / ``tokenizer_dir``.
        tokenizer_check: ``tokenizer_dir`` already loaded (:func:`checkpoint_gather.hf_export.
            check_tokenizer`): the HF export does not load its byte-identical copy again.
        durable: fsync every output file and directory before the rename and the parent
            after it (survives an OS crash or power loss); without it the output is still
            atomic for any failure of this process (:mod:`base.atomic`).
        dtype: the Hugging Face export's dtype: a name (``float32``, ``bfloat16``,
            ``float16``), None (the sources' dtype if they all agree, else float32), or the
            choice already made (``node0 gather`` makes it over the stages' dtypes before a
            merge). GGUF files are written in their own types.

    Raises:
        CheckpointError: coverage, a tensor against its source, a value the asked dtype or a
            GGUF type cannot hold, or the output exists.
        ConfigError: ``dtype`` is not a dtype name.
    """
    out_dir = Path(out_dir)
    config = export_config(config)
    base_needed = hf or bool(gguf_types)
    try:
        if not base_needed and not adapters:
            raise Node0Error("nothing to export: no Hugging Face, GGUF or adapter output asked")
        if adapters and lora_settings is None:
            raise Node0Error("exporting adapters needs their LoRA settings")
        manifests = [manifest for manifest, _ in sources]
        if not isinstance(dtype, ExportDType):
            dtype = resolve_export_dtype(dtype, held_dtypes(manifests))
        plan = state = None
        if base_needed:
            plan = check_coverage(config, manifests)
            log.info("coverage proven: %d layers from %d sources", plan.num_layers, len(manifests))
            for manifest, tensors in sources:
                verify_tensors(manifest, tensors, check_digests=not verified, may_lack=plan.dropped)
            state = assemble_state(plan, sources)
            digests = {
                name: entry.sha256
                for m in manifests
                for name, entry in m.tensors.items()
                if name in state
            }
        record = {
            "model": model,
            "sources": [
                {"source_id": m.source_id, "peer": m.peer, "layers": [m.start, m.end]}
                for m in manifests
            ],
            **dict(provenance or {}),
        }
        if run is not None:
            record["run_id"] = run.path.name
        name = model or "model"
        with atomic_dir(out_dir, durable=durable) as tmp:
            jobs: dict[str, Callable[[], Path]] = {}
            if hf:
                jobs["huggingface"] = functools.partial(
                    export_hf,
                    tmp / "hf",
                    config,
                    state,
                    tokenizer_dir=tokenizer_dir,
                    generation_config=generation_config,
                    provenance=record,
                    max_shard_bytes=max_shard_bytes,
                    tensor_digests=digests,
                    durable=durable,
                    tokenizer_check=tokenizer_check,
                    dtype=dtype.name,
                )
            fields = gguf_tokenizer or _Once(
                functools.partial(
                    tokenizer_fields,
                    model=model,
                    tokenizer_dir=tokenizer_dir,
                    vocab_size=config.vocab_size,
                )
            )
            for out_type in gguf_types:
                jobs[f"gguf-{out_type}"] = lambda out_type=out_type: export_gguf(
                    tmp / f"{name}-{out_type}.gguf",
                    config,
                    state,
                    tokenizer=fields(),
                    out_type=out_type,
                    name=name,
                    provenance=record,
                    digest=True,
                    durable=durable,
                )
            if adapters:
                jobs["peft-adapter"] = functools.partial(
                    export_peft_adapter,
                    tmp / "adapter",
                    adapters,
                    lora_settings,
                    num_layers=config.num_hidden_layers,
                    base_model=base_model,
                    provenance=record,
                    durable=durable,
                )
            outputs = run_concurrently(jobs)
            manifest = build_manifest(
                tmp,
                model=model,
                sources=manifests,
                plan=plan,
                outputs=outputs,
                extra={"provenance": record, **({"dtype": dtype.to_json()} if hf else {})},
            )
            write_manifest(tmp, manifest, durable=durable)
        if run is not None:
            if hf:
                run.set("dtype", dtype.to_json())
            record_outputs(run, out_dir, manifest)
            run.finish("done", output_dir=str(out_dir))
    except BaseException as exc:
        if run is not None:
            run.finish("failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    rel = {label: out_dir / path.relative_to(tmp) for label, path in outputs.items()}
    return ExportResult(
        out_dir=out_dir,
        hf_dir=rel.get("huggingface"),
        gguf_files={k.removeprefix("gguf-"): v for k, v in rel.items() if k.startswith("gguf-")},
        adapter_dir=rel.get("peft-adapter"),
        manifest=out_dir / "manifest.json",
        plan=plan,
        dtype=dtype.name if hf else None,
    )
