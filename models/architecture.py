"""Check a checkpoint's declared architecture against the tensors it actually holds.

Runs before any weight is loaded (seed 001: never fall back silently to random weights). Reads
only ``config.json`` and the safetensors headers (names and shapes), never the tensor data.
The tensors name their family: a fragment of an unsupported family (:data:`FOREIGN_SIGNATURES`)
refuses the checkpoint, otherwise the registered families whose signature they carry (or, with
none, the plain LLaMA-style layout) are what the config must declare.
"""

from __future__ import annotations

from collections.abc import Iterable

from base.errors import CheckpointError
from models.checkpoint import CheckpointIndex
from models.family import ModelFamily
from models.registry import declared_family, families, supported
from models.tensor_names import EMBED, LM_HEAD, parse_layer

# Tensor-name fragments of families node0 does not serve (checked first, in order: a Qwen3 or
# MoE checkpoint may also carry a registered family's signature).
FOREIGN_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_norm.weight", "Qwen3ForCausalLM (model_type qwen3): per-head q/k norms"),
    ("block_sparse_moe", "MixtralForCausalLM (model_type mixtral): mixture-of-experts blocks"),
    ("mlp.experts.", "a mixture-of-experts model: expert MLPs"),
    ("attn.c_attn", "GPT2LMHeadModel (model_type gpt2)"),
    ("self_attention.query_key_value", "a Falcon/BLOOM-style fused attention model"),
    ("mlp.fc1", "a Phi-style model (fc1/fc2 MLP)"),
)

# buffers some older checkpoints carry per layer; never weights
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def foreign_layout(names: Iterable[str]) -> str | None:
    """What an unsupported family's tensors look like, if ``names`` carry one's fragment."""
    names = list(names)
    for fragment, description in FOREIGN_SIGNATURES:
        if any(fragment in name for name in names):
            return description
    return None


def layout_families(names: Iterable[str]) -> list[ModelFamily]:
    """The registered families whose layout ``names`` have: those whose whole signature they
    carry, else those with no signature (the plain LLaMA-style layout)."""
    names = list(names)
    marked = [
        f
        for f in families()
        if f.signature and all(any(frag in n for n in names) for frag in f.signature)
    ]
    return marked or [f for f in families() if not f.signature]


def _fix(directory, family: ModelFamily | None = None) -> str:
    arch, kind = ("<Architecture>", "<type>")
    if family is not None:
        arch, kind = family.architecture, family.model_type
    return (
        f"node0 stamp {directory} --architecture {arch} --model-type {kind} -o <OUT>"
        ' (or edit "architectures"/"model_type" in config.json)'
    )


def check_architecture(config, index: CheckpointIndex) -> ModelFamily:
    """Raise :class:`CheckpointError` when config.json and the tensors disagree.

    The message says what the tensors look like and how to fix the declaration.

    Returns:
        the checkpoint's family.
    """
    directory = index.directory
    declared = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    names = sorted(index.shapes)
    foreign = foreign_layout(names)
    if foreign is not None:
        raise CheckpointError(
            f"{directory}: config.json declares {declared or '(no architecture)'} / model_type "
            f"{model_type!r}, but the tensors look like {foreign}; node0 serves "
            f"{supported()} checkpoints only",
            hint="use a checkpoint of a supported family; if the declaration is what is wrong: "
            + _fix(directory),
        )
    candidates = layout_families(names)
    family = declared_family(config)
    if family is None or family not in candidates:
        layout = candidates[0]
        note = f" ({layout.signature_note})" if layout.signature_note else ""
        raise CheckpointError(
            f"{directory}: tensors are {layout.display_name}-layout{note}, but config.json "
            f"declares architectures={declared} model_type={model_type!r}",
            hint=f'declare architectures=["{layout.architecture}"], model_type='
            f'"{layout.model_type}": ' + _fix(directory, layout),
        )
    reason = family.unsupported(config)
    if reason:
        raise CheckpointError(
            f"{directory}: {reason}",
            hint=f"node0 cannot serve this configuration of {family.display_name}",
        )
    _check_tensors(config, index, family)
    return family


def _check_tensors(config, index: CheckpointIndex, family: ModelFamily) -> None:
    directory = index.directory
    names = sorted(index.shapes)
    n_layers = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False))
    expected = family.expected_shapes(config, range(n_layers), first=True, last=True)
    if tied:
        expected.pop(LM_HEAD)
    missing = [n for n in expected if n not in index.shapes]
    if missing:
        raise CheckpointError(
            f"{directory}: {len(missing)} tensors required by the declared config "
            f"({n_layers} layers) are missing, e.g. {missing[:3]}; the checkpoint holds "
            f"{index.num_layers} layers",
            hint="check num_hidden_layers in config.json against the checkpoint",
        )
    extra_layers = sorted({p[0] for n in names if (p := parse_layer(n)) and p[0] >= n_layers})
    if extra_layers:
        raise CheckpointError(
            f"{directory}: tensors for layers {extra_layers} exist beyond num_hidden_layers="
            f"{n_layers}",
            hint="check num_hidden_layers in config.json",
        )
    foreign = [
        n
        for n in names
        if parse_layer(n) and n not in expected and not n.endswith(_IGNORED_SUFFIXES)
    ]
    if foreign:
        raise CheckpointError(
            f"{directory}: {len(foreign)} layer tensors are not part of a "
            f"{family.display_name} block, e.g. {foreign[:3]}; loading would ignore them",
            hint=f"this is not a plain {family.display_name} checkpoint",
        )
    wrong = [(n, index.shapes[n], s) for n, s in expected.items() if index.shapes[n] != s]
    if wrong:
        name, got, want = wrong[0]
        raise CheckpointError(
            f"{directory}: {len(wrong)} tensors have shapes that contradict config.json, e.g. "
            f"{name}: checkpoint {list(got)}, config implies {list(want)}",
            hint="the config (hidden_size, heads, vocab_size, …) does not belong to these weights",
        )
    if EMBED not in index.shapes:  # pragma: no cover - covered by `missing`
        raise CheckpointError(f"{directory}: no token embedding")
