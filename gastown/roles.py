"""The Gas Town roles, and how a role is read off a path, an address or a name.

This is the one role list of node0: the corpus, RAG, the data loader and the inference client
all take it from here. A role is derived, never guessed:

- from a **path** — the nearest *role directory* (``polecats/<name>/``, ``crew/<name>/``,
  ``witness/``, ``refinery/``, ``mayor/``, ``deacon/``, ``boot/``): where a document lives or
  where a Claude Code session was started;
- from an **address** — the last role component of a Gas Town mail address such as
  ``gastown/polecats/nux`` or ``gastown/witness`` (a bead's ``created_by`` / ``assignee``);
- from a **name** — the first dash/underscore/dot-separated token that is a role, e.g. the
  formula ``mol-witness-patrol``.

Each function returns ``None`` when nothing names a role; what that means (every role, a
default role, quarantine) is the consumer's decision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

#: The agent roles of a Gas Town, in a fixed order.
ROLES: tuple[str, ...] = ("mayor", "polecat", "witness", "deacon", "boot", "crew", "refinery")

#: Roles with one agent per town or rig ("the witness"); the others are pools ("a polecat").
SINGLE_AGENT_ROLES: frozenset[str] = frozenset({"mayor", "witness", "deacon", "boot", "refinery"})

#: Directory (or address component) name → role. Pools live in plural directories.
ROLE_DIRS: Mapping[str, str] = MappingProxyType(
    {
        "mayor": "mayor",
        "polecats": "polecat",
        "polecat": "polecat",
        "witness": "witness",
        "deacon": "deacon",
        "boot": "boot",
        "crew": "crew",
        "refinery": "refinery",
    }
)


def is_role(name: object) -> bool:
    """Whether ``name`` is one of :data:`ROLES` (exactly; ``polecats`` is a directory)."""
    return isinstance(name, str) and name in ROLES


def role_from_path(path: str, *, is_dir: bool = False) -> str | None:
    """The role of the nearest role directory of ``path`` (``/`` or ``\\`` separated).

    Args:
        path: a file path (its last component, the file name, is not looked at) or, with
            ``is_dir``, a directory such as a session's working directory.
        is_dir: ``path`` names a directory; its last component counts too.
    """
    parts = [p for p in re.split(r"[/\\]", path) if p]
    if not is_dir:
        parts = parts[:-1]
    for part in reversed(parts):
        if part in ROLE_DIRS:
            return ROLE_DIRS[part]
    return None


def role_from_address(address: object) -> str | None:
    """The role of a Gas Town address: ``gastown/polecats/nux`` → ``polecat``.

    Components are separated by ``/`` or ``:``; the last one that names a role directory
    wins. Non-strings and addresses without a role component give ``None``.
    """
    if not isinstance(address, str):
        return None
    for part in reversed(re.split(r"[/:]", address)):
        if part in ROLE_DIRS:
            return ROLE_DIRS[part]
    return None


def role_from_name(name: str) -> str | None:
    """The first role token of a name: ``mol-witness-patrol`` → ``witness``."""
    for token in re.split(r"[-_.]", name):
        if token in ROLE_DIRS:
            return ROLE_DIRS[token]
    return None


__all__ = [
    "ROLES",
    "ROLE_DIRS",
    "SINGLE_AGENT_ROLES",
    "is_role",
    "role_from_address",
    "role_from_name",
    "role_from_path",
]
