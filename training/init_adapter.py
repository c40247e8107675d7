"""``init_from``: a run whose adapter starts from an existing adapter's weights (e.g. DPO from
the SFT adapter), not from LoRA's zero-B initialisation.

The source is a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``,
what ``node0 gather --adapters-only`` writes) or a registry version (``deacon-v2``). Before
anything reaches the swarm it is checked against the run: the same base model (a registry
version records it), the config's LoRA rank, alpha, dropout and target modules, and tensors
for every decoder layer of the model with the shapes of its projections, so that every stage
of any layout finds its slice. A mismatch is a :class:`~base.errors.ConfigError` (exit 3); an
unreadable adapter a :class:`~base.errors.CheckpointError` (exit 4).

Over the swarm (``node0 train``) the adapter is attached on every daemon under the name of the
adapter being trained (``Adapters.LoadAdapter``: each daemon verifies the sha256 and keeps its
stages' slice), and the training job then trains those weights. The run record keeps the
source and the weights' sha256 (``init_adapter``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from base.errors import CheckpointError, ConfigError
from base.hashing import sha256_file
from lora.config import LoraSettings
from lora.stage_adapters import _layer_of

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class InitAdapter:
    """A checked init adapter: where it is, what it is, and its digest."""

    source: str
    """As the config names it (a directory or a registry version)."""
    path: Path
    sha256: str
    """sha256 of ``adapter_model.safetensors`` (the registry's and the daemons' digest)."""
    settings: LoraSettings
    """The settings a daemon attaches it with (from ``adapter_config.json``)."""
    version: str | None = None
    """The registry version, when the source is one."""

    def record(self) -> dict:
        """The run record's ``init_adapter`` entry."""
        return {
            "source": self.source,
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "lora": self.settings.model_dump(mode="json"),
        }


def _settings(directory: Path) -> LoraSettings:
    """The adapter's LoRA settings as a daemon reads them (``pipeline_stages.runtime_adapters``)."""
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"init adapter {directory}: {CONFIG} unreadable ({exc})") from exc
    try:
        return LoraSettings.from_peft_config(config)
    except ValueError as exc:
        raise ConfigError(f"init adapter {directory}: {CONFIG}: {exc}") from exc


def _locate(source: str, model: str, registry_db: Path | None) -> tuple[Path, str | None]:
    """The adapter directory ``source`` names, and its registry version (None: a directory)."""
    from registry.store import VERSION_ID, UnknownVersion, resolve_version

    path = Path(source)
    if path.is_dir():
        return path, None
    if not VERSION_ID.match(source):
        raise ConfigError(
            f"init_from {source!r}: no adapter directory there, and not a registry version "
            "name (<role>-v<N>)"
        )
    try:
        version, _, directory = resolve_version(source, registry_db)
    except UnknownVersion as exc:
        if exc.known is None:
            message = f"init_from {source!r}: no registry at {exc.db} to resolve it"
            raise ConfigError(message) from exc
        raise ConfigError(
            f"init_from {source!r}: the registry has no such version{exc.listing()}",
            hint="node0 model list",
        ) from exc
    if version.base_model != model:
        raise ConfigError(
            f"init_from {source}: trained on {version.base_model!r}, the run trains {model!r}"
        )
    return directory, version.id


def _check_tensors(weights: Path, settings: LoraSettings, model_config: dict) -> None:
    """Every decoder layer of the model, each target module, with the model's shapes."""
    layers = int(model_config["num_hidden_layers"])
    hidden = int(model_config["hidden_size"])
    heads = int(model_config["num_attention_heads"])
    head_dim = int(model_config.get("head_dim") or hidden // heads)
    kv = int(model_config.get("num_key_value_heads") or heads) * head_dim
    inter = int(model_config["intermediate_size"])
    dims = {  # module -> (in_features, out_features)
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    found: dict[tuple[int, str], dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                layer = _layer_of(key)
                module = next((m for m in dims if f".{m}." in key), None)
                kind = "A" if "lora_A" in key else "B" if "lora_B" in key else None
                if layer is None or module is None or kind is None:
                    raise ConfigError(f"init adapter {weights}: unexpected tensor {key}")
                found.setdefault((layer, module), {})[kind] = tuple(f.get_slice(key).get_shape())
    except ConfigError:
        raise
    except Exception as exc:  # safetensors raises its own errors on a corrupt file
        raise CheckpointError(f"init adapter {weights}: unreadable ({exc})") from exc
    held = sorted({layer for layer, _ in found})
    if held != list(range(layers)):
        raise ConfigError(
            f"init adapter {weights.parent}: tensors for layers {_span(held)}, the model has "
            f"layers 0..{layers - 1}: every stage needs its layers' slice"
        )
    modules = sorted({m for _, m in found})
    if modules != sorted(settings.target_modules):
        raise ConfigError(
            f"init adapter {weights.parent}: tensors for {modules}, its config targets "
            f"{sorted(settings.target_modules)}"
        )
    rank = settings.rank
    for (layer, module), shapes in sorted(found.items()):
        n_in, n_out = dims[module]
        want = {"A": (rank, n_in), "B": (n_out, rank)}
        if shapes != want:
            raise ConfigError(
                f"init adapter {weights.parent}: layer {layer} {module} has LoRA shapes "
                f"{shapes}, the model needs {want} (another architecture?)"
            )


def _span(layers: list[int]) -> str:
    return f"{layers[0]}..{layers[-1]}" if layers else "none"


def resolve_init_adapter(
    source: str,
    *,
    model: str,
    model_dir: Path,
    lora: LoraSettings,
    registry_db: Path | None = None,
) -> InitAdapter:
    """Find and check the adapter ``source`` names for a run of ``model`` with ``lora``.

    Raises:
        ConfigError: unknown source, another base model, other LoRA settings, or tensors that
            do not cover the model's layers with its shapes.
        CheckpointError: the adapter's files are missing or unreadable.
    """
    directory, version = _locate(source, model, registry_db)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"init adapter {directory}: no {WEIGHTS} ({CONFIG} + {WEIGHTS})")
    settings = _settings(directory)
    differ = [
        f"{name} {getattr(settings, name)!r} (the config's {getattr(lora, name)!r})"
        for name in ("rank", "alpha", "dropout")
        if getattr(settings, name) != getattr(lora, name)
    ]
    if sorted(settings.target_modules) != sorted(lora.target_modules):
        differ.append(
            f"target_modules {sorted(settings.target_modules)} (the config's "
            f"{sorted(lora.target_modules)})"
        )
    if differ:
        raise ConfigError(
            f"init adapter {source}: LoRA settings differ from the run's: {'; '.join(differ)}",
            hint="set lora: to the init adapter's settings",
        )
    try:
        model_config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{model_dir}/config.json unreadable ({exc})") from exc
    _check_tensors(weights, settings, model_config)
    return InitAdapter(source, directory.resolve(), sha256_file(weights), settings, version)
