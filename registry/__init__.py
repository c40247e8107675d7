"""The model registry: versions with lineage, a content-addressed artifact store,
deployments per rig and role, training jobs as beads, and conventions staleness.

The metadata schema is in :mod:`registry.schema` (SQLite by default; a MySQL/Dolt backend is a
drop-in). Front ends (``node0 model …``, ``node0 formula run``) live in ``node/``; daemons and
``node0-inference`` resolve version ids here.
"""

from registry.artifacts import ArtifactStore, StoredAdapter
from registry.conventions import Drift, conventions_fingerprint, drift
from registry.job_bead import LIFECYCLE, JobBead, state_from_trainer
from registry.scores import read_scores
from registry.store import REASONS, Registry, Version, parse_version_id, refusal

__all__ = [
    "LIFECYCLE",
    "REASONS",
    "ArtifactStore",
    "Drift",
    "JobBead",
    "Registry",
    "StoredAdapter",
    "Version",
    "conventions_fingerprint",
    "drift",
    "parse_version_id",
    "read_scores",
    "refusal",
    "state_from_trainer",
]
