"""Which credential this process presents, and the signers and authorizer built from it.

Resolution, first match wins:

1. :func:`use_credential` (the ``--credential FILE`` option of the CLIs);
2. ``$NODE0_CREDENTIAL`` (a file path; inherited by child processes; ``none``: present
   nothing, e.g. to measure an ``--insecure-open-swarm`` swarm without client-side signing);
3. the local authority's credential for the caller's role,
   ``$NODE0_HOME/swarm/authority/credentials/local-<role>.json``, which ``node0 swarm up``
   issues, so clients of the local swarm need no option.

None of them: the process presents nothing, and a private swarm refuses it (``no_credential``,
exit 13); only an ``--insecure-open-swarm`` swarm serves it.
"""

from __future__ import annotations

import os
from pathlib import Path

from security.authority import default_authority_dir
from security.credentials import CredentialFile, Role
from security.grpc_auth import CallSigner

ENV = "NODE0_CREDENTIAL"
_chosen: Path | None = None
_signers: dict[Path, CallSigner] = {}


def use_credential(path: Path | str | None) -> None:
    """Present the credential in ``path`` from now on (also to child processes)."""
    global _chosen
    _chosen = Path(path) if path else None
    if _chosen is not None:
        CredentialFile.load(_chosen)  # fail early on a bad file
        os.environ[ENV] = str(_chosen)


def local_credential_path(role: Role | str) -> Path:
    return default_authority_dir() / "credentials" / f"local-{Role(role).value}.json"


def credential_path(role: Role | str) -> Path | None:
    """The credential file this process presents for ``role`` (None: none found)."""
    if _chosen is not None:
        return _chosen
    if os.environ.get(ENV):
        return None if os.environ[ENV] == "none" else Path(os.environ[ENV])
    local = local_credential_path(role)
    return local if local.is_file() else None


def call_signer(role: Role | str) -> CallSigner | None:
    """The per-call signer for ``role``'s credential, shared by every channel of the process."""
    path = credential_path(role)
    if path is None:
        return None
    path = path.resolve()
    if path not in _signers:
        _signers[path] = CallSigner(CredentialFile.load(path))
    return _signers[path]


def dht_authorizer(role: Role | str):
    """A :class:`security.dht_authorizer.SwarmAuthorizer` for the client's DHT peer, or None."""
    path = credential_path(role)
    if path is None:
        return None
    from security.dht_authorizer import SwarmAuthorizer

    return SwarmAuthorizer(CredentialFile.load(path))
