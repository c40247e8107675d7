"""Formulas: one record or one typed problem per file; the highest version of a name wins."""

from __future__ import annotations

from pathlib import Path

from gastown import Formula, Problem, newest_formulas, read_formula
from tests.fixtures import SAMPLE_RIG

FORMULAS = SAMPLE_RIG / ".beads" / "formulas"


def _sample() -> list[Formula | Problem]:
    return [
        read_formula(SAMPLE_RIG, p.relative_to(SAMPLE_RIG).as_posix(), rig="gastown")
        for p in sorted(FORMULAS.rglob("*.formula.toml"))
    ]


def test_sample_formulas() -> None:
    got = _sample()
    problems = [p for p in got if isinstance(p, Problem)]
    formulas = [f for f in got if isinstance(f, Formula)]
    assert [(p.file, p.reason) for p in problems] == [
        (".beads/formulas/mol-release.formula.toml", "invalid_toml")
    ]
    assert {f.name: (f.version_number, f.role) for f in formulas if "archive" not in f.file} == {
        "mol-deacon-patrol": (2, "deacon"),
        "mol-plan-epic": (1, None),
        "mol-polecat-work": (3, "polecat"),
        "mol-witness-patrol": (1, "witness"),
    }
    chosen = newest_formulas(formulas)
    assert (
        chosen.winners["mol-polecat-work"].file == ".beads/formulas/mol-polecat-work.formula.toml"
    )
    (lost,) = chosen.superseded
    assert lost.old.file.startswith(".beads/formulas/archive/") and not lost.identical
    steps = chosen.winners["mol-polecat-work"].steps
    assert steps and all(s.id for s in steps)


def _write(root: Path, rel: str, text: str) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
    return rel


def test_required_keys(tmp_path: Path) -> None:
    cases = {
        'formula = "mol-a"\ndescription = "d"\n': ("missing_field", "version"),
        'formula = "mol-a"\nversion = "2"\ndescription = "d"\n': ("missing_field", "version"),
        'formula = "mol-a"\nversion = 2\n': ("missing_field", "description"),
        'version = 2\ndescription = "d"\n': ("missing_field", "formula"),
        "[[steps]\n": ("invalid_toml", None),
    }
    for i, (text, (reason, detail)) in enumerate(cases.items()):
        got = read_formula(tmp_path, _write(tmp_path, f"f{i}.formula.toml", text), rig="r")
        assert isinstance(got, Problem) and got.whole_file
        assert got.reason == reason and (detail is None or got.detail == detail)
    assert str(read_formula(tmp_path, "f0.formula.toml", rig="r")) == (
        "f0.formula.toml: formula mol-a has no version"
    )


def test_a_higher_version_wins_wherever_it_lives(tmp_path: Path) -> None:
    text = 'formula = "mol-crew-sync"\nversion = {}\ndescription = "Sync."\n'
    current = _write(tmp_path, "formulas/mol-crew-sync.formula.toml", text.format(1))
    archived = _write(tmp_path, "formulas/archive/mol-crew-sync.formula.toml", text.format(4))
    formulas = [read_formula(tmp_path, rel, rig="r") for rel in (current, archived)]
    chosen = newest_formulas(formulas)  # type: ignore[arg-type]
    assert chosen.winners["mol-crew-sync"].file == archived
    assert chosen.winners["mol-crew-sync"].role == "crew"
