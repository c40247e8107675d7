"""The town settings a deploy writes: the ``node0 provider settings`` entry for a role,
referencing the exact registered version.

The file (``--settings``, default ``$GT_TOWN_SETTINGS`` or ``$NODE0_HOME/town/settings.json``)
is JSON with ``agents`` and ``roles`` (Gas Town's town settings); a deploy merges the entry of
``node0-<role>`` (agent command ``node0-inference --model <version> --role <role> --rig <rig>``)
and the role mapping into it, keeps the file as it was in ``<file>.prev``, and replaces it
atomically. Other agents and keys stay.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from base.atomic import atomic_write
from base.errors import ConfigError
from base.paths import node0_home
from inference.provider import settings_entry


def default_settings_path() -> Path:
    env = os.environ.get("GT_TOWN_SETTINGS")
    return Path(env) if env else node0_home() / "town" / "settings.json"


def read_settings(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"town settings {path} are not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"town settings {path} must be a JSON object")
    return data


def write_role_entry(path: Path, *, role: str, version_id: str, rig: str) -> dict:
    """Merge the role's entry for ``version_id`` into the settings at ``path``; returns the
    entry written."""
    current = read_settings(path)
    entry = settings_entry(role, version_id, [], ["--rig", rig])
    merged = dict(current)
    merged["agents"] = {**current.get("agents", {}), **entry["agents"]}
    merged["roles"] = {**current.get("roles", {}), **entry["roles"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        shutil.copyfile(path, path.with_name(path.name + ".prev"))
    atomic_write(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return entry


def deployed_version(path: Path, role: str) -> str | None:
    """The version the settings' ``node0-<role>`` agent runs (``--model``), or None."""
    agent = read_settings(path).get("agents", {}).get(f"node0-{role}")
    if not agent:
        return None
    args = agent.get("args", [])
    return args[args.index("--model") + 1] if "--model" in args else None
