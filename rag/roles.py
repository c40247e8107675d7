"""Gas Town roles as RAG stores them: the role list is :mod:`gastown.roles`; ``""`` means every
role (a document that names no role is retrieved for all of them)."""

from __future__ import annotations

from gastown.roles import ROLE_DIRS, ROLES
from gastown.roles import role_from_path as _role_from_path


def role_from_path(rel: str, *, is_dir: bool = False) -> str:
    """The role a file (or directory) belongs to: its nearest role directory; ``""`` for all."""
    return _role_from_path(rel, is_dir=is_dir) or ""


__all__ = ["ROLES", "ROLE_DIRS", "role_from_path"]
