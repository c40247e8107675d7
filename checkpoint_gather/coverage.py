"""Prove, before anything is written, that the gathered tensors make exactly one whole model.

Pure functions over manifests (names, shapes, dtypes, digests): no tensor data is needed, so the
check runs before a single byte is pulled, and again on what actually arrived.

* every decoder layer ``0 … n-1`` is held by exactly one source (a missing or a duplicated layer
  fails, naming the layers and the sources);
* every tensor the model's family (looked up from the config) needs is present with the shape
  the config implies and a floating dtype an export writes (float32, bfloat16, float16; the
  stages' dtypes may differ, :mod:`checkpoint_gather.dtypes` chooses what is written), and
  nothing else is;
* embeddings, final norm and LM head are present; with tied embeddings the LM head is not a
  tensor of its own — a last stage that carries a copy must carry exactly the embedding matrix
  (same sha256), and the copy is dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from base.errors import CheckpointError
from checkpoint_gather.dtypes import EXPORT_DTYPES
from checkpoint_gather.sources import SourceManifest
from models import EMBED, FINAL_NORM, LM_HEAD, family_of, parse_layer

TensorSpec = tuple[tuple[int, ...], str]  # (shape, dtype name)


@dataclass(frozen=True)
class CoveragePlan:
    """The proven assembly: which source provides each tensor of the output."""

    num_layers: int
    tied: bool
    owner: dict[str, str]  # output tensor name -> source id
    layer_sources: dict[int, str]  # layer -> source id
    dropped: list[str] = field(default_factory=list)  # tensors received but not written


def _ranges(layers: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    items = sorted(set(layers))
    start = prev = None
    for layer in items + [None]:
        if start is not None and (layer is None or layer != prev + 1):
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if layer is not None and start is None:
            start = layer
        prev = layer
    return ", ".join(out)


def check_layer_coverage(num_layers: int, manifests: Sequence[SourceManifest]) -> dict[int, str]:
    """Every layer held by exactly one source; returns ``{layer: source_id}``."""
    holders: dict[int, list[str]] = {layer: [] for layer in range(num_layers)}
    ids = [m.source_id for m in manifests]
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"source ids are not unique: {sorted(ids)}")
    for manifest in manifests:
        if not 0 <= manifest.start < manifest.end:
            raise CheckpointError(
                f"source {manifest.source_id}: empty or negative layer range "
                f"[{manifest.start}, {manifest.end})"
            )
        outside = sorted(
            {
                p[0]
                for n in manifest.tensors
                if (p := parse_layer(n)) and p[0] not in manifest.layers
            }
        )
        if outside:
            raise CheckpointError(
                f"source {manifest.source_id} declares layers [{manifest.start}, {manifest.end}) "
                f"but holds tensors of layers {_ranges(outside)}"
            )
        beyond = [layer for layer in manifest.layers if layer >= num_layers]
        if beyond:
            raise CheckpointError(
                f"source {manifest.source_id} holds layers {_ranges(beyond)}, beyond the "
                f"model's {num_layers} layers"
            )
        for layer in manifest.layers:
            holders[layer].append(manifest.source_id)
    missing = [layer for layer, who in holders.items() if not who]
    duplicated = {layer: who for layer, who in holders.items() if len(who) > 1}
    problems = []
    if missing:
        problems.append(f"layers {_ranges(missing)} are held by no source")
    if duplicated:
        by_sources: dict[tuple[str, ...], list[int]] = {}
        for layer, who in duplicated.items():
            by_sources.setdefault(tuple(who), []).append(layer)
        problems += [
            f"layers {_ranges(layers)} are held twice ({' and '.join(who)})"
            for who, layers in by_sources.items()
        ]
    if problems:
        raise CheckpointError(
            f"layer coverage of the {num_layers}-layer model is wrong: " + "; ".join(problems),
            hint="every layer must come from exactly one stage",
        )
    return {layer: who[0] for layer, who in holders.items()}


def check_tensors(
    config, tensors: Mapping[str, TensorSpec], *, dtypes: Collection[str] = EXPORT_DTYPES
) -> list[str]:
    """Every tensor the architecture needs, with the right shape and one of ``dtypes``, and
    nothing else.

    ``tensors`` maps HF names to ``(shape, dtype)``. With tied embeddings an ``lm_head.weight``
    entry is tolerated here (the caller must prove it equals the embedding); the names to drop
    are returned.
    """
    family = family_of(config)
    n_layers = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False))
    expected = family.expected_shapes(config, range(n_layers), first=True, last=True)
    dropped: list[str] = []
    if tied:
        expected.pop(LM_HEAD)
        if LM_HEAD in tensors:
            dropped.append(LM_HEAD)
    missing = [n for n in expected if n not in tensors]
    if missing:
        layers = sorted({p[0] for n in missing if (p := parse_layer(n))})
        named = [n for n in missing if parse_layer(n) is None]
        parts = []
        if layers:
            parts.append(f"layers {_ranges(layers)} are incomplete or absent")
        parts += [
            {
                EMBED: "the token embedding",
                FINAL_NORM: "the final norm",
                LM_HEAD: "the LM head (embeddings are not tied)",
            }[n]
            + f" ({n}) is missing"
            for n in named
        ]
        raise CheckpointError(
            "the gathered model is incomplete: " + "; ".join(parts) + f" (e.g. {missing[0]})"
        )
    unexpected = sorted(set(tensors) - set(expected) - set(dropped))
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} tensors are not part of a {n_layers}-layer "
            f"{family.display_name}: {unexpected[:5]}"
        )
    for name, want in expected.items():
        shape, got_dtype = tensors[name]
        if tuple(shape) != tuple(want):
            raise CheckpointError(f"{name}: shape {list(shape)}, the config implies {list(want)}")
        if got_dtype not in dtypes:
            raise CheckpointError(
                f"{name}: dtype {got_dtype}, expected one of {', '.join(dtypes)}",
                hint="node0 exports floating-point weights only; a stage holding "
                "other (e.g. quantized) weights cannot be gathered",
            )
    for name in dropped:
        if tuple(tensors[name][0]) != tuple(expected[EMBED]):
            raise CheckpointError(
                f"{name}: shape {list(tensors[name][0])} cannot be a copy of "
                f"the tied embedding {list(expected[EMBED])}"
            )
    return dropped


def check_coverage(
    config, manifests: Sequence[SourceManifest], *, dtypes: Collection[str] = EXPORT_DTYPES
) -> CoveragePlan:
    """Prove the sources make exactly one model of ``config``; return who provides what."""
    layer_sources = check_layer_coverage(config.num_hidden_layers, manifests)
    owner: dict[str, str] = {}
    specs: dict[str, TensorSpec] = {}
    for manifest in manifests:
        for name, entry in manifest.tensors.items():
            if name in owner:
                raise CheckpointError(
                    f"{name} is provided twice ({owner[name]} and {manifest.source_id})"
                )
            owner[name] = manifest.source_id
            specs[name] = (entry.shape, entry.dtype)
    dropped = check_tensors(config, specs, dtypes=dtypes)
    if LM_HEAD in dropped:
        head = _entry(manifests, owner, LM_HEAD)
        embed = _entry(manifests, owner, EMBED)
        if head.sha256 != embed.sha256:
            raise CheckpointError(
                f"embeddings are tied, but the LM head from {owner[LM_HEAD]} differs from the "
                f"token embedding from {owner[EMBED]} (sha256 mismatch)",
                hint="the stages' copies of the tied matrix diverged; they must be identical",
            )
    for name in dropped:
        owner.pop(name)
    return CoveragePlan(
        num_layers=config.num_hidden_layers,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        owner=owner,
        layer_sources=layer_sources,
        dropped=dropped,
    )


def _entry(manifests: Sequence[SourceManifest], owner: Mapping[str, str], name: str):
    source = next(m for m in manifests if m.source_id == owner[name])
    return source.tensors[name]
