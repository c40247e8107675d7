"""The model registry: versions with lineage, their adapters, deployments per rig and role.

MLflow's model registry is the anchor: a version is immutable once registered; deploying is
pointing a (rig, role) at a version, and rolling back is pointing it at the one before; every
change is an event with a time and a reason. The database is reached through the DB-API only
(the statements are in :mod:`registry.schema`), so another backend is a drop-in.

Refusals raise a :class:`~base.errors.Node0Error` subclass carrying a machine-readable
``reason`` (see :data:`REASONS`), which ``node0 model … --json`` prints.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import ConfigError, QualityGateError, RequestError
from base.hashing import canonical_json
from base.paths import node0_home
from gastown.roles import ROLES
from registry import schema
from registry.artifacts import ArtifactStore, read_adapter_dir

VERSION_ID = re.compile(r"^(?P<name>[a-z][a-z0-9_-]*?)-v(?P<version>[1-9][0-9]*)$")
NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

#: machine-readable refusal reasons -> what they mean
REASONS = {
    "unknown_version": "no version of that id is registered",
    "pruned": "the version was pruned: its artifacts are gone",
    "gate_not_passed": "the version's eval gate failed",
    "not_evaluated": "the version has no eval scores",
    "sha256_mismatch": "an artifact's sha256 differs from the one recorded",
    "no_deployment": "nothing is deployed for that rig and role",
    "no_previous_deployment": "no earlier deployment to roll back to",
    "bad_name": "a name or version id that is not well-formed",
    "role_mismatch": "the version was trained for another role",
}


def refusal(cls: type, reason: str, message: str, hint: str | None = None):
    """An exception of error family ``cls`` with ``reason`` attached."""
    assert reason in REASONS, reason
    exc = cls(message, hint=hint)
    exc.reason = reason
    return exc


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    task: str
    rank: int
    alpha: float
    compatible_models: list[str]
    sha256: str
    config_sha256: str
    size: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Version:
    """One registered version (a row of ``versions`` with its adapters)."""

    id: str
    name: str
    version: int
    role: str
    base_model: str
    created_at: str
    status: str
    corpus_sha256: str | None
    corpus_manifest_sha256: str | None
    config_sha256: str | None
    train_run_dir: str | None
    run_record_sha256: str | None
    source_run_dir: str | None
    parent: str | None
    hyperparameters: dict
    eval_scores: dict | None
    eval_run_dir: str | None
    gate_passed: bool | None
    dpo_pairs: int
    conventions: dict
    adapters: list[AdapterEntry] = field(default_factory=list)
    deployed: list[dict] = field(default_factory=list)  # active deployments: rig, role, since

    @property
    def gate(self) -> str:
        return {True: "passed", False: "failed", None: "none"}[self.gate_passed]

    def as_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k not in ("adapters", "deployed")}
        data["gate"] = self.gate
        data["adapters"] = [a.as_dict() for a in self.adapters]
        data["deployed"] = list(self.deployed)
        return data


def default_db_path() -> Path:
    """``$NODE0_REGISTRY`` if set, else ``$NODE0_HOME/registry.db``."""
    env = os.environ.get("NODE0_REGISTRY")
    return Path(env) if env else node0_home() / "registry.db"


def parse_version_id(version_id: str) -> tuple[str, int]:
    match = VERSION_ID.match(version_id)
    if not match:
        raise refusal(
            RequestError,
            "bad_name",
            f"{version_id!r} is not a version id",
            hint="version ids look like deacon-v2 (<name>-v<number>)",
        )
    return match["name"], int(match["version"])


class Registry:
    """The registry: a database (SQLite by default) and an artifact store."""

    def __init__(self, db_path: str | Path, store_root: str | Path | None = None):
        """Open (creating if needed) the database at ``db_path``.

        ``store_root``: the artifact store. A new database records it; None takes the one the
        database recorded (default ``$NODE0_HOME/models``).
        """
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        for ddl in schema.TABLES.values():
            self._db.execute(ddl)
        default_store = Path(store_root or node0_home() / "models").resolve()
        for key, value in (
            ("schema_version", str(schema.SCHEMA_VERSION)),
            ("store_root", str(default_store)),
        ):
            self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (key, value))
        if store_root is None:
            (recorded,) = self._db.execute(
                "SELECT value FROM meta WHERE name = 'store_root'"
            ).fetchone()
            store_root = recorded
        self.store = ArtifactStore(store_root)

    @classmethod
    def open(cls, db_path: str | Path | None = None, store_root: str | Path | None = None):
        """The registry at ``db_path`` (default :func:`default_db_path`) with its store
        (default: the one the database recorded, else ``$NODE0_HOME/models``)."""
        return cls(db_path or default_db_path(), store_root)

    def close(self) -> None:
        self._db.close()

    # -- reading -------------------------------------------------------------------------
    def _rows(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
        cursor = self._db.execute(sql.replace("?", schema.PARAMSTYLE), params)
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            for key in schema.JSON_COLUMNS & row.keys():
                if row[key] is not None:
                    row[key] = json.loads(row[key])
            rows.append(row)
        return rows

    def _version(self, row: dict) -> Version:
        adapters = [
            AdapterEntry(**{k: v for k, v in a.items() if k != "version_id"})
            for a in self._rows(
                "SELECT * FROM adapters WHERE version_id = ? ORDER BY name", (row["id"],)
            )
        ]
        deployed = [
            {
                "rig": d["rig"],
                "role": d["role"],
                "since": d["deployed_at"],
                "ungated": bool(d["ungated"]),
            }
            for d in self.current_deployments()
            if d["version_id"] == row["id"]
        ]
        gate = row.pop("gate_passed")
        return Version(
            **row,
            gate_passed=None if gate is None else bool(gate),
            adapters=adapters,
            deployed=deployed,
        )

    def get(self, version_id: str) -> Version:
        parse_version_id(version_id)
        rows = self._rows("SELECT * FROM versions WHERE id = ?", (version_id,))
        if not rows:
            known = [v.id for v in self.versions()]
            raise refusal(
                RequestError,
                "unknown_version",
                f"no model version {version_id!r} in the registry {self.db_path}",
                hint=f"registered: {', '.join(known) or 'none'} (node0 model list)",
            )
        return self._version(rows[0])

    def versions(self, name: str | None = None, *, include_pruned: bool = True) -> list[Version]:
        sql = "SELECT * FROM versions"
        params: tuple = ()
        if name is not None:
            sql += " WHERE name = ?"
            params = (name,)
        rows = self._rows(sql + " ORDER BY name, version", params)
        out = [self._version(r) for r in rows]
        return [v for v in out if include_pruned or v.status != "pruned"]

    def latest(self, name: str) -> Version | None:
        found = [v for v in self.versions(name) if v.status != "pruned"]
        return found[-1] if found else None

    def adapters(self) -> list[dict]:
        """Every adapter of every version, with its version, role and base model."""
        return [
            {
                "version": r["version_id"],
                "role": r["role"],
                "base_model": r["base_model"],
                "status": r["status"],
                **{k: r[k] for k in schema.ADAPTER_COLUMNS[1:]},
            }
            for r in self._rows(
                "SELECT a.*, v.role, v.base_model, v.status FROM adapters a "
                "JOIN versions v ON v.id = a.version_id ORDER BY a.version_id, a.name"
            )
        ]

    def current_deployments(self) -> list[dict]:
        """The deployment in force per (rig, role): the newest active one."""
        rows = self._rows("SELECT * FROM deployments WHERE active = 1 ORDER BY seq")
        current: dict[tuple[str, str], dict] = {}
        for row in rows:
            current[(row["rig"], row["role"])] = row
        return [current[k] for k in sorted(current)]

    def deployment(self, rig: str, role: str) -> dict | None:
        for row in self.current_deployments():
            if (row["rig"], row["role"]) == (rig, role):
                return row
        return None

    def events(self, version_id: str | None = None) -> list[dict]:
        if version_id is None:
            return self._rows("SELECT * FROM events ORDER BY seq")
        return self._rows("SELECT * FROM events WHERE version_id = ? ORDER BY seq", (version_id,))

    def _next_seq(self, table: str) -> int:
        (value,) = self._db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return int(value)

    def _event(self, kind: str, version_id, rig, role, reason: str, detail: dict) -> None:
        values = (
            self._next_seq("events"),
            _now(),
            kind,
            version_id,
            rig,
            role,
            reason,
            canonical_json(detail).decode(),
        )
        self._db.execute(schema.insert_sql("events", schema.EVENT_COLUMNS), values)

    # -- writing -------------------------------------------------------------------------
    def register(
        self,
        *,
        role: str,
        base_model: str,
        adapter_dir: str | Path,
        expected_sha256: str | None = None,
        name: str | None = None,
        task: str | None = None,
        lineage: dict[str, Any] | None = None,
        hyperparameters: dict | None = None,
        eval_scores: dict | None = None,
        eval_run_dir: str | None = None,
        dpo_pairs: int = 0,
        conventions: dict | None = None,
        reason: str = "",
    ) -> Version:
        """Store the adapter (sha256 verified) and record the next version of ``name``.

        Args:
            role: the Gas Town role the model is for (one of :data:`gastown.roles.ROLES`).
            base_model: the base model the adapter was trained on (the daemons' model name).
            adapter_dir: a PEFT adapter directory (``node0 gather --adapters-only``'s
                ``adapter/``).
            expected_sha256: the weights' digest recorded by the producing run; a file that
                hashes differently is refused (``sha256_mismatch``).
            name: the model's name (default: the role); versions count up per name.
            task: the adapter's task (default: ``role``).
            lineage: corpus_sha256, corpus_manifest_sha256, config_sha256, train_run_dir,
                run_record_sha256, source_run_dir, parent (default: the newest version).
            eval_scores: the eval run's ``scores.json`` (its gate verdict is the version's).
            conventions: ``{"rig": …, "files": {path: sha256}}`` the corpus saw.
        """
        if role not in ROLES:
            raise refusal(
                ConfigError, "bad_name", f"unknown role {role!r}; roles: {', '.join(ROLES)}"
            )
        name = name or role
        if not NAME.match(name):
            raise refusal(
                ConfigError,
                "bad_name",
                f"model name {name!r} is not well-formed",
                hint="lowercase letters, digits, - and _",
            )
        config = read_adapter_dir(Path(adapter_dir))
        stored = self.store.put_adapter(adapter_dir, expected_sha256=expected_sha256)
        lineage = dict(lineage or {})
        previous = self.latest(name)
        number = (max((v.version for v in self.versions(name)), default=0)) + 1
        version_id = f"{name}-v{number}"
        gate = None if eval_scores is None else int(bool(eval_scores["gate"]["passed"]))
        row = {
            "id": version_id,
            "name": name,
            "version": number,
            "role": role,
            "base_model": base_model,
            "created_at": _now(),
            "status": "registered",
            "corpus_sha256": lineage.get("corpus_sha256"),
            "corpus_manifest_sha256": lineage.get("corpus_manifest_sha256"),
            "config_sha256": lineage.get("config_sha256"),
            "train_run_dir": lineage.get("train_run_dir"),
            "run_record_sha256": lineage.get("run_record_sha256"),
            "source_run_dir": lineage.get("source_run_dir"),
            "parent": lineage.get("parent", previous.id if previous else None),
            "hyperparameters": canonical_json(hyperparameters or {}).decode(),
            "eval_scores": None if eval_scores is None else canonical_json(eval_scores).decode(),
            "eval_run_dir": eval_run_dir,
            "gate_passed": gate,
            "dpo_pairs": int(dpo_pairs),
            "conventions": canonical_json(conventions or {}).decode(),
        }
        adapter = (
            version_id,
            version_id,  # daemons serve the version's adapter under the version id
            task or role,
            int(config.get("r", 0)),
            float(config.get("lora_alpha", 0)),
            canonical_json([base_model]).decode(),
            stored.sha256,
            stored.config_sha256,
            stored.size,
        )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                schema.insert_sql("versions", schema.VERSION_COLUMNS),
                tuple(row[c] for c in schema.VERSION_COLUMNS),
            )
            self._db.execute(schema.insert_sql("adapters", schema.ADAPTER_COLUMNS), adapter)
            self._event(
                "register",
                version_id,
                None,
                None,
                reason or "registered",
                {"sha256": stored.sha256, "gate": gate},
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self.get(version_id)

    def deploy(
        self,
        version_id: str,
        *,
        rig: str,
        role: str | None = None,
        ungated: bool = False,
        reason: str = "",
        settings_path: str | None = None,
    ) -> dict:
        """Make ``version_id`` the version in force for ``(rig, role)``.

        Refuses a version whose gate did not pass (``gate_not_passed``) or that was never
        evaluated (``not_evaluated``) unless ``ungated``, which is recorded with the deployment
        and its event. Returns the deployment row.
        """
        version = self.get(version_id)
        role = role or version.role
        if version.status == "pruned":
            raise refusal(RequestError, "pruned", f"{version_id} was pruned; it cannot be deployed")
        if role != version.role:
            raise refusal(
                RequestError,
                "role_mismatch",
                f"{version_id} was trained for the role {version.role}, not {role}",
            )
        for adapter in version.adapters:
            self.store.verify(adapter.sha256)
        if not ungated and version.gate_passed is not True:
            reason_code = "not_evaluated" if version.gate_passed is None else "gate_not_passed"
            failed = (version.eval_scores or {}).get("gate", {}).get("failed_categories", [])
            raise refusal(
                QualityGateError,
                reason_code,
                f"{version_id}: eval gate "
                + (
                    "never ran"
                    if version.gate_passed is None
                    else f"failed ({', '.join(failed) or 'composite'})"
                )
                + "; refusing to deploy",
                hint="deploy a version that passed `node0 eval --gate`, or give --ungated "
                "(recorded as such)",
            )
        at = _now()
        row = {
            "seq": self._next_seq("deployments"),
            "rig": rig,
            "role": role,
            "version_id": version_id,
            "deployed_at": at,
            "ended_at": None,
            "active": 1,
            "ungated": int(ungated),
            "settings_path": settings_path,
        }
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                schema.insert_sql("deployments", schema.DEPLOYMENT_COLUMNS),
                tuple(row[c] for c in schema.DEPLOYMENT_COLUMNS),
            )
            self._event(
                "deploy",
                version_id,
                rig,
                role,
                reason or "deployed",
                {"ungated": bool(ungated), "gate": version.gate, "settings": settings_path},
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return row

    def rollback(self, *, rig: str, role: str, reason: str = "") -> tuple[dict, dict]:
        """End the deployment in force for ``(rig, role)``; the one before it is in force again.

        Returns ``(ended, now_current)``.
        """
        current = self.deployment(rig, role)
        if current is None:
            raise refusal(RequestError, "no_deployment", f"nothing is deployed for {role} on {rig}")
        earlier = [
            d
            for d in self._rows(
                "SELECT * FROM deployments WHERE active = 1 AND rig = ? AND role = ? ORDER BY seq",
                (rig, role),
            )
            if d["seq"] < current["seq"] and d["version_id"] != current["version_id"]
        ]
        if not earlier:
            raise refusal(
                RequestError,
                "no_previous_deployment",
                f"{current['version_id']} is the only version deployed for {role} on {rig}",
            )
        previous = earlier[-1]
        at = _now()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # every deployment after the previous one ends (a re-deploy of the current version
            # stacked twice ends with it)
            self._db.execute(
                "UPDATE deployments SET active = 0, ended_at = ? "
                "WHERE active = 1 AND rig = ? AND role = ? AND seq > ?",
                (at, rig, role, previous["seq"]),
            )
            self._event(
                "rollback",
                previous["version_id"],
                rig,
                role,
                reason or "rolled back",
                {"from": current["version_id"], "to": previous["version_id"]},
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return current, previous

    def prune_plan(self, keep: int) -> list[Version]:
        """Versions deployed nowhere beyond the newest ``keep`` of their name (oldest first)."""
        if keep < 0:
            raise ConfigError("--keep must be 0 or more")
        deployed = {d["version_id"] for d in self.current_deployments()}
        plan = []
        names = sorted({v.name for v in self.versions()})
        for name in names:
            live = [v for v in self.versions(name) if v.status != "pruned"]
            newest = {v.id for v in live[-keep:]} if keep else set()
            plan += [v for v in live if v.id not in newest and v.id not in deployed]
        return plan

    def prune(self, plan: list[Version], *, reason: str = "") -> list[dict]:
        """Mark the planned versions pruned and delete artifacts no other version uses."""
        pruned_ids = {v.id for v in plan}
        still_used = {
            a.sha256
            for v in self.versions()
            if v.status != "pruned" and v.id not in pruned_ids
            for a in v.adapters
        }
        done = []
        for version in plan:
            removed = []
            for adapter in version.adapters:
                if adapter.sha256 not in still_used and self.store.remove(adapter.sha256):
                    removed.append(adapter.sha256)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE versions SET status = 'pruned' WHERE id = ?", (version.id,))
            self._event("prune", version.id, None, None, reason or "pruned", {"removed": removed})
            self._db.execute("COMMIT")
            done.append({"version": version.id, "removed_artifacts": removed})
        return done

    def adapter_source(self, version_id: str) -> tuple[Version, AdapterEntry, Path]:
        """The version, its adapter and the verified store directory a daemon loads it from."""
        version = self.get(version_id)
        if version.status == "pruned":
            raise refusal(RequestError, "pruned", f"{version_id} was pruned; its adapter is gone")
        adapter = version.adapters[0]
        return version, adapter, self.store.verify(adapter.sha256)


class UnknownVersion(LookupError):
    """A registry version name that does not resolve: ``known`` lists its role's versions, or
    is None when there is no registry at ``db`` at all."""

    def __init__(self, name: str, db: Path, known: list[str] | None) -> None:
        super().__init__(name)
        self.name, self.db, self.known = name, db, known

    def listing(self) -> str:
        """`` (it has a, b)``, or empty when the role has no versions."""
        return f" (it has {', '.join(self.known)})" if self.known else ""


def resolve_version(
    name: str, db_path: str | Path | None = None
) -> tuple[Version, AdapterEntry, Path]:
    """The version ``name`` (``<role>-v<N>``), its adapter and verified store directory, from
    the registry at ``db_path`` (default :func:`default_db_path`); :class:`UnknownVersion` when
    there is no registry or no such version."""
    db = Path(db_path) if db_path is not None else default_db_path()
    if not db.is_file():
        raise UnknownVersion(name, db, None)
    registry = Registry.open(db)
    try:
        known = [v.id for v in registry.versions(VERSION_ID.match(name)["name"])]
        if name not in known:
            raise UnknownVersion(name, db, known)
        return registry.adapter_source(name)
    finally:
        registry.close()
