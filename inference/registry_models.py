"""Registered model versions as model names: ``node0-inference --model deacon-v2``.

A name of the form ``<name>-v<N>`` that the registry knows (``$NODE0_REGISTRY``, default
``$NODE0_HOME/registry.db``) resolves to its base model and its adapter (served under the
version id). Before the session
opens, the adapter is loaded at run time on every daemon that serves the base model
(``Adapters.LoadAdapter``: the daemon verifies the sha256 and keeps only its stages' slice); a
daemon that holds it already answers at once. A name the registry does not know is left as it
is (a catalog name or a checkpoint directory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from base.errors import Node0Error, SwarmError
from base.refusals import call_failure
from proto import node0_adapters_pb2, node0_adapters_pb2_grpc
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import secure_channel

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RegisteredModel:
    """A registry version resolved for serving."""

    version: str
    base_model: str
    adapter: str  # the name daemons serve its adapter under (the version id)
    sha256: str
    path: Path  # the adapter directory in the artifact store (verified)


def resolve_registered(name: str, registry_db: Path | None = None) -> RegisteredModel | None:
    """The registry version ``name`` names, or None when it names none (or no registry is
    here). A pruned version, or an artifact that fails its sha256, raises."""
    from registry.store import VERSION_ID, Registry, default_db_path

    db = registry_db or default_db_path()
    if not VERSION_ID.match(name) or Path(name).exists() or not db.is_file():
        return None
    registry = Registry.open(db)
    try:
        if not registry.versions(VERSION_ID.match(name)["name"]):
            return None
        version, adapter, path = registry.adapter_source(name)
    finally:
        registry.close()
    return RegisteredModel(version.id, version.base_model, adapter.name, adapter.sha256, path)


def load_on_swarm(records, model: RegisteredModel, *, timeout: float = LOAD_TIMEOUT_S) -> int:
    """Load ``model``'s adapter on every daemon announcing its base model (once per endpoint).

    Returns the number of daemons that attached it now. Raises the refusal's error family
    (e.g. ``wrong_model``: a daemon of another base; ``invalid_request``: sha256 mismatch).

    ``LoadAdapter`` changes what a daemon serves, so a private swarm admits it from the
    ``host`` role only (the operator's credential: ``$NODE0_CREDENTIAL``, or the local swarm's
    ``local-host``); a process without one is refused (``no_credential`` / ``role_forbids``).
    """
    endpoints = sorted(
        {r.endpoint for r in records if r.model == model.base_model and r.state == "online"}
    )
    if not endpoints:
        raise SwarmError(f"no daemon serves {model.base_model} to load {model.version} on")
    request = node0_adapters_pb2.LoadAdapterRequest(
        name=model.adapter,
        base_model=model.base_model,
        sha256=model.sha256,
        path=str(model.path),
    )
    attached = 0
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            try:
                # loading an adapter is an operator's act: a host credential (security.roles)
                stub = node0_adapters_pb2_grpc.AdaptersStub(
                    secure_channel(channel, call_signer(Role.HOST))
                )
                reply = stub.LoadAdapter(request, timeout=timeout)
            except grpc.RpcError as exc:
                failure = call_failure(exc)
                error: Node0Error = failure.family(
                    f"{endpoint} refused to load {model.version}: {failure}"
                )
                error.reason = str(failure.reason) if failure.reason else None
                raise error from exc
        attached += int(reply.loaded)
        log.info("%s: %s %s", endpoint, model.version, "loaded" if reply.loaded else "held")
    return attached


def deployed_versions(base_model: str, registry_db: Path | None = None) -> list[RegisteredModel]:
    """The registry versions of ``base_model`` deployed on some rig now (none: no registry)."""
    from registry.store import Registry, default_db_path

    db = registry_db or default_db_path()
    if not db.is_file():
        return []
    registry = Registry.open(db)
    try:
        ids = sorted({d["version_id"] for d in registry.current_deployments()})
        found = []
        for version_id in ids:
            version = registry.get(version_id)
            if version.base_model != base_model or not version.adapters:
                continue
            adapter = version.adapters[0]
            found.append(
                RegisteredModel(
                    version.id,
                    version.base_model,
                    adapter.name,
                    adapter.sha256,
                    registry.store.path_for(adapter.sha256),
                )
            )
        return found
    finally:
        registry.close()
