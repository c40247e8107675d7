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
"""

from __future__ import annotations

import json
import logging
import threading
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


def _settings(directory: Path) -> LoraSettings:
    try:
        return LoraSettings.from_peft_config(json.loads((directory / CONFIG).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{directory / CONFIG}: not readable: {exc}") from exc
    except ValueError as exc:
        raise InvalidInput(f"{directory / CONFIG}: {exc}") from exc


def _stage_slice(weights: Path, start: int, end: int) -> dict[str, torch.Tensor]:
    """The tensors of layers [start, end) only; the rest of the file is never read."""
    with safe_open(str(weights), framework="pt") as f:
        return {
            key: f.get_tensor(key)
            for key in f.keys()  # noqa: SIM118 (safe_open has no __iter__)
            if (layer := _layer_of(key)) is not None and start <= layer < end
        }


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
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise InvalidInput(f"no adapter at {directory} (needs {WEIGHTS} and {CONFIG})")
    with _lock:
        held = getattr(executor, "runtime_adapters", None)
        if held is None:
            held = executor.runtime_adapters = {}
        if name in held:
            if held[name] != sha256:
                raise AdapterConflict(
                    f"adapter {name!r} is held with sha256 {held[name][:16]}…, not {sha256[:16]}…"
                )
            return False, 0
        if any(name in adapters(stage) for stage in executor.stages.values()):
            raise AdapterConflict(f"adapter name {name!r} is taken on this daemon")
        actual = sha256_file(weights)
        if actual != sha256:
            raise InvalidInput(
                f"adapter {name!r}: {weights} has sha256 {actual[:16]}…, the registry "
                f"recorded {sha256[:16]}…; refusing to load it"
            )
        settings = _settings(directory)
        count = 0
        with executor.gate.training():  # attaching changes the stage's modules
            for (start, end), stage in sorted(executor.stages.items()):
                state = _stage_slice(weights, start, end)
                attach_adapter(stage, name, settings)
                with torch.no_grad():
                    count += load_adapter_state_dict(stage, name, state)
        held[name] = sha256
    log.info("adapter %s loaded at run time (%d tensors, sha256 %s)", name, count, sha256[:16])
    return True, count
