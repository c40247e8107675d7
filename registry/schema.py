"""The registry's schema: every table and column, in one module.

The metadata lives in an embedded SQLite database by default (``$NODE0_HOME/registry.db``).
The statements here use only portable SQL (``TEXT``/``INTEGER`` columns, explicit keys, no
triggers, no SQLite functions), and :class:`registry.store.Registry` talks to the database
through the Python DB-API alone, so a MySQL- or Dolt-compatible backend (the spec keeps the
registry as a Dolt table in the town's HQ database) is a drop-in: a connection from its DB-API
driver and :data:`PARAMSTYLE` set to its placeholder (``%s``). JSON-valued columns hold
canonical JSON text.

Tables:

- ``versions``: one row per registered model version (``deacon-v2``), with its lineage;
- ``adapters``: the LoRA adapters a version consists of (name, task, rank, compatible models,
  the sha256 of the weights file in the artifact store);
- ``deployments``: per rig and role, the stack of deployed versions (``active`` = 1 while a
  deployment is in force; rollback ends the newest one and the one before is in force again);
- ``events``: register, deploy, rollback and prune, each with its time and reason.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
PARAMSTYLE = "?"  # sqlite3's; a MySQL/Dolt driver uses "%s"

TABLES: dict[str, str] = {
    "meta": """
        CREATE TABLE IF NOT EXISTS meta (
            name VARCHAR(64) PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    "versions": """
        CREATE TABLE IF NOT EXISTS versions (
            id VARCHAR(128) PRIMARY KEY,        -- '<name>-v<version>', e.g. deacon-v2
            name VARCHAR(96) NOT NULL,          -- the model's name: the role by default
            version INTEGER NOT NULL,           -- 1, 2, ... per name
            role VARCHAR(32) NOT NULL,
            base_model VARCHAR(256) NOT NULL,
            created_at VARCHAR(32) NOT NULL,    -- ISO 8601 UTC
            status VARCHAR(16) NOT NULL,        -- registered | pruned
            corpus_sha256 VARCHAR(64),          -- training corpus (its index/order hash)
            corpus_manifest_sha256 VARCHAR(64),
            config_sha256 VARCHAR(64),          -- the training run's resolved config
            train_run_dir TEXT,
            run_record_sha256 VARCHAR(64),
            source_run_dir TEXT,                -- the gather (or training) run registered from
            parent VARCHAR(128),                -- the version this one was trained after
            hyperparameters TEXT,               -- JSON
            eval_scores TEXT,                   -- JSON: scores.json of the eval run, or null
            eval_run_dir TEXT,
            gate_passed INTEGER,                -- 1 / 0 / NULL (never evaluated)
            dpo_pairs INTEGER NOT NULL,
            conventions TEXT NOT NULL,          -- JSON: {rig, files: {path: sha256}}
            UNIQUE (name, version)
        )""",
    "adapters": """
        CREATE TABLE IF NOT EXISTS adapters (
            version_id VARCHAR(128) NOT NULL,
            name VARCHAR(128) NOT NULL,         -- the name daemons serve it under
            task VARCHAR(64) NOT NULL,
            rank INTEGER NOT NULL,
            alpha REAL NOT NULL,
            compatible_models TEXT NOT NULL,    -- JSON list of base model names
            sha256 VARCHAR(64) NOT NULL,        -- adapter_model.safetensors
            config_sha256 VARCHAR(64) NOT NULL, -- adapter_config.json
            size INTEGER NOT NULL,
            PRIMARY KEY (version_id, name)
        )""",
    "deployments": """
        CREATE TABLE IF NOT EXISTS deployments (
            seq INTEGER NOT NULL,
            rig VARCHAR(128) NOT NULL,
            role VARCHAR(32) NOT NULL,
            version_id VARCHAR(128) NOT NULL,
            deployed_at VARCHAR(32) NOT NULL,
            ended_at VARCHAR(32),
            active INTEGER NOT NULL,            -- 1 while in force (the newest is current)
            ungated INTEGER NOT NULL,           -- deployed with --ungated
            settings_path TEXT,
            PRIMARY KEY (seq)
        )""",
    "events": """
        CREATE TABLE IF NOT EXISTS events (
            seq INTEGER NOT NULL,
            at VARCHAR(32) NOT NULL,
            kind VARCHAR(16) NOT NULL,          -- register | deploy | rollback | prune
            version_id VARCHAR(128),
            rig VARCHAR(128),
            role VARCHAR(32),
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,               -- JSON
            PRIMARY KEY (seq)
        )""",
}

VERSION_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "version",
    "role",
    "base_model",
    "created_at",
    "status",
    "corpus_sha256",
    "corpus_manifest_sha256",
    "config_sha256",
    "train_run_dir",
    "run_record_sha256",
    "source_run_dir",
    "parent",
    "hyperparameters",
    "eval_scores",
    "eval_run_dir",
    "gate_passed",
    "dpo_pairs",
    "conventions",
)
ADAPTER_COLUMNS: tuple[str, ...] = (
    "version_id",
    "name",
    "task",
    "rank",
    "alpha",
    "compatible_models",
    "sha256",
    "config_sha256",
    "size",
)
DEPLOYMENT_COLUMNS: tuple[str, ...] = (
    "seq",
    "rig",
    "role",
    "version_id",
    "deployed_at",
    "ended_at",
    "active",
    "ungated",
    "settings_path",
)
EVENT_COLUMNS: tuple[str, ...] = (
    "seq",
    "at",
    "kind",
    "version_id",
    "rig",
    "role",
    "reason",
    "detail",
)
JSON_COLUMNS = frozenset(
    {"hyperparameters", "eval_scores", "conventions", "compatible_models", "detail"}
)


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """``INSERT INTO table (…) VALUES (?, …)`` in this backend's placeholder style."""
    marks = ", ".join([PARAMSTYLE] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
