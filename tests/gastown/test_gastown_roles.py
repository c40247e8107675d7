"""The one role list, and how a role is read off a path, an address or a name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gastown.roles import (
    ROLE_DIRS,
    ROLES,
    SINGLE_AGENT_ROLES,
    is_role,
    role_from_address,
    role_from_name,
    role_from_path,
)


def test_the_role_list() -> None:
    assert ROLES == ("mayor", "polecat", "witness", "deacon", "boot", "crew", "refinery")
    assert set(ROLE_DIRS.values()) == set(ROLES)
    assert SINGLE_AGENT_ROLES < set(ROLES) and {"polecat", "crew"}.isdisjoint(SINGLE_AGENT_ROLES)
    assert is_role("refinery") and not is_role("polecats") and not is_role("all")


@pytest.mark.parametrize(
    ("path", "is_dir", "role"),
    [
        ("polecats/nux/CLAUDE.md", False, "polecat"),
        ("CLAUDE.md", False, None),
        ("witness/CLAUDE.md", False, "witness"),
        ("refinery/AGENTS.md", False, "refinery"),
        ("crew/max/notes/CLAUDE.md", False, "crew"),
        ("/home/x/gt/gastown/polecats/nux", True, "polecat"),
        ("/home/x/gt/mayor", True, "mayor"),
        ("/home/x/gt/mayor", False, None),  # a file named mayor is not a role directory
        ("C:\\gt\\gastown\\refinery", True, "refinery"),
        ("/home/x/gt/deacon/dogs/boot", True, "boot"),  # the nearest role directory wins
        ("/tmp/elsewhere", True, None),
    ],
)
def test_role_from_path(path: str, is_dir: bool, role: str | None) -> None:
    assert role_from_path(path, is_dir=is_dir) == role


def test_role_from_address_and_name() -> None:
    assert role_from_address("gastown/mayor") == "mayor"
    assert role_from_address("gastown/polecats/nux") == "polecat"
    assert role_from_address("gastown:refinery") == "refinery"
    assert role_from_address("steve") is None
    assert role_from_address(None) is None and role_from_address(3) is None
    assert role_from_name("mol-witness-patrol") == "witness"
    assert role_from_name("mol-polecat-work.v2") == "polecat"
    assert role_from_name("mol-plan-epic") is None


def test_every_consumer_takes_the_role_list_from_gastown() -> None:
    from corpus.config import CorpusConfig
    from dataload.schema import ROLES as DATASET_ROLES
    from inference.transcript import ROLES as TRANSCRIPT_ROLES
    from rag.roles import ROLES as RAG_ROLES

    assert DATASET_ROLES == (*ROLES, "all")  # "all": the dataset partition of shared knowledge
    assert CorpusConfig().roles == list(ROLES)
    assert RAG_ROLES is ROLES and TRANSCRIPT_ROLES is ROLES
    with pytest.raises(ValidationError, match="not Gas Town roles"):
        CorpusConfig(roles=["polecat", "janitor"])
    with pytest.raises(ValidationError, match="not a Gas Town role"):
        CorpusConfig(default_bead_role="all")
