"""Task adapters loaded while the daemon runs (``Adapters.LoadAdapter``), without a restart.

A registered model version (``node0 model``) is an adapter in the artifact store, named after
its version (``deacon-v2``). Loading it on a running daemon:

1. the base model the adapter was trained on must be the daemon's (``wrong_model`` otherwise);
2. ``adapter_model.safetensors`` must hash to the sha256 the registry recorded — the whole file
   is read and hashed before anything is attached (``invalid_request`` otherwise);
3. each hosted stage reads only its own layers' tensors from the file (``safe_open``, key by
   key), attaches the adapter (:func:`lora.attach_adapter`) and copies them in, under the
   compute gate's training turn, since attaching changes the stage's modules;
4. a name already held with the same digest is a no-op (``loaded = false``); with another digest
   the call is refused (``adapter_conflict``): a version's adapter never changes.

The result equals loading the same directory from the daemon's config at start
(:func:`node.daemon.load_task_adapter`): same settings, same tensors.

Each loaded adapter is remembered with its source directory and digest (:class:`HeldAdapter`),
because a daemon that moves to another span (``stages: auto``) must attach it again with the new
layers' tensors (:func:`install_stage`). The file is hashed again then: an adapter whose file
vanished or changed since is dropped (returned to the caller to report), never half-attached.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from base.hashing import sha256_file
from lora import attach_adapter
from lora.config import LoraSettings
from lora.stage_adapters import _layer_of, adapters, load_adapter_state_dict
from pipeline_stages.errors import AdapterConflict, InvalidInput, WrongModel

log = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_lock = threading.Lock()


@dataclass(frozen=True)
class HeldAdapter:
    """An adapter loaded at run time: where it came from, so a move can read it again.

    Attributes:
        name: the adapter's name on the daemon (a registry version's, ``deacon-v2``).
        directory: the PEFT directory it was read from (the registry's artifact path).
        sha256: the digest of its ``adapter_model.safetensors`` the caller vouched for.
    """

    name: str
    directory: Path
    sha256: str


@dataclass(frozen=True)
class DroppedAdapter:
    """A held adapter that could not be attached to a new span, and why."""

    name: str
    reason: str


def held_adapters(executor) -> dict[str, HeldAdapter]:
    """The run-time adapters ``executor`` holds, by name (created empty on first use)."""
    held = getattr(executor, "runtime_adapters", None)
    if held is None:
        held = executor.runtime_adapters = {}
    return held


def _settings(directory: Path) -> LoraSettings:
    try:
        return LoraSettings.from_peft_config(json.loads((directory / CONFIG).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{directory / CONFIG}: not readable: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(f"{directory / CONFIG}: {exc}") from exc


def _stage_slice(weights: Path, start: int, end: int) -> dict[str, torch.Tensor]:
    """The tensors of layers [start, end) only; the rest of the file is never read."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {
                key: f.get_tensor(key)
                for key in f.keys()  # noqa: SIM118 (safe_open has no __iter__)
                if (layer := _layer_of(key)) is not None and start <= layer < end
            }
    except Exception as exc:  # gone or unreadable since it was hashed: nothing attached yet
        raise InvalidInput(f"{weights}: not readable: {exc}") from exc


def _verified_settings(entry: HeldAdapter) -> LoraSettings:
    """The adapter's settings, after its weights file hashed to the digest it was loaded with."""
    weights = entry.directory / WEIGHTS
    try:
        actual = sha256_file(weights)
    except OSError as exc:
        raise InvalidInput(f"adapter {entry.name!r}: {weights} not readable: {exc}") from exc
    if actual != entry.sha256:
        raise InvalidInput(
            f"adapter {entry.name!r}: {weights} has sha256 {actual[:16]}…, the registry "
            f"recorded {entry.sha256[:16]}…; refusing to load it"
        )
    return _settings(entry.directory)


def _attach(stage, span: tuple[int, int], entry: HeldAdapter, settings: LoraSettings) -> int:
    """Attach ``entry`` to ``stage`` with the tensors of its layers; the count copied."""
    state = _stage_slice(entry.directory / WEIGHTS, *span)
    attach_adapter(stage, entry.name, settings)
    with torch.no_grad():
        return load_adapter_state_dict(stage, entry.name, state)


def install_stage(executor, span: tuple[int, int], stage) -> list[DroppedAdapter]:
    """Serve ``stage`` as ``span`` with every run-time adapter ``executor`` holds attached.

    For a move: each held adapter is hashed again and its new layers' tensors read from its
    source. One whose file vanished or no longer hashes to its digest is forgotten (the daemon
    no longer serves it) and returned, so the caller can report it. Under the loading lock, a
    ``LoadAdapter`` that arrives mid-move is either held before (and attached here) or sees the
    new stage.
    """
    dropped = []
    with _lock:
        held = held_adapters(executor)
        for name, entry in sorted(held.items()):
            try:
                if name in adapters(stage):  # a config adapter's name, taken mid-move
                    raise InvalidInput(f"adapter name {name!r} is taken on the new span")
                _attach(stage, span, entry, _verified_settings(entry))
            except InvalidInput as exc:
                del held[name]
                dropped.append(DroppedAdapter(name, str(exc)))
                log.warning("dropped run-time adapter %s at the move to %s: %s", name, span, exc)
        executor.stages[span] = stage
    return dropped


def load_runtime_adapter(
    executor, *, name: str, directory: str | Path, sha256: str, base_model: str
) -> tuple[bool, int]:
    """Attach adapter ``name`` from ``directory`` to every stage ``executor`` hosts.

    Returns ``(loaded, tensors)``: whether it was attached now (False: it already was, with
    this digest) and the number of tensors held across the stages.

    Raises:
        WrongModel: ``base_model`` is not the model this daemon serves.
        InvalidInput: no adapter there, or its weights do not hash to ``sha256``.
        AdapterConflict: ``name`` is held with weights of another digest.
    """
    if base_model != executor.model_name:
        raise WrongModel(
            f"adapter {name!r} was trained on {base_model!r}; this daemon serves "
            f"{executor.model_name!r}"
        )
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        raise InvalidInput(f"no adapter at {directory} (needs {WEIGHTS} and {CONFIG})")
    with _lock:
        held = held_adapters(executor)
        if name in held:
            if held[name].sha256 != sha256:
                raise AdapterConflict(
                    f"adapter {name!r} is held with sha256 {held[name].sha256[:16]}…, "
                    f"not {sha256[:16]}…"
                )
            return False, 0
        if any(name in adapters(stage) for stage in executor.stages.values()):
            raise AdapterConflict(f"adapter name {name!r} is taken on this daemon")
        entry = HeldAdapter(name, directory, sha256)
        settings = _verified_settings(entry)
        count = 0
        with executor.gate.training():  # attaching changes the stage's modules
            for span, stage in sorted(executor.stages.items()):
                count += _attach(stage, span, entry, settings)
        held[name] = entry
    log.info("adapter %s loaded at run time (%d tensors, sha256 %s)", name, count, sha256[:16])
    return True, count
