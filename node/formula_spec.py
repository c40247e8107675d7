"""A node0 formula file: typed variables and phases with declared gates.

``configs/formulas/<name>.formula.toml`` is a Gas Town formula (``formula``, ``version``,
``description``, ``[[steps]]`` with ``id``/``title``/``description``/``needs``, readable by
:mod:`gastown.formulas`) with two additions node0 runs:

- ``[vars.<name>]``: ``type`` (``string``, ``int``, ``float``, ``bool``, ``enum`` with
  ``choices``, ``file``, ``dir``), ``default`` or ``required = true``, ``min``/``max`` for
  numbers, and a ``description``. Values given with ``--var k=v`` are parsed and checked
  before anything runs; an unknown variable is refused.
- per step: ``state`` (the job bead's lifecycle state while it runs), ``preconditions`` and
  ``postconditions`` (names of checks the runner implements), ``artifacts`` (what it leaves)
  and ``command`` (argv template).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.errors import ConfigError
from base.hashing import sha256_file

FORMULA_DIR = Path("configs/formulas")
TYPES = ("string", "int", "float", "bool", "enum", "file", "dir")


@dataclass(frozen=True)
class Variable:
    name: str
    type: str
    description: str
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    def parse(self, text: Any) -> Any:
        """``text`` (from ``--var`` or the default) as this variable's type, checked."""
        where = f"--var {self.name}"
        try:
            if self.type == "int":
                value: Any = int(text)
            elif self.type == "float":
                value = float(text)
            elif self.type == "bool":
                if isinstance(text, bool):
                    value = text
                elif str(text).lower() in ("true", "1", "yes"):
                    value = True
                elif str(text).lower() in ("false", "0", "no"):
                    value = False
                else:
                    raise ValueError(text)
            else:
                value = str(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {text!r} is not a {self.type}") from exc
        if self.type in ("int", "float"):
            if self.min is not None and value < self.min:
                raise ConfigError(f"{where}: {value} is below the minimum {self.min:g}")
            if self.max is not None and value > self.max:
                raise ConfigError(f"{where}: {value} is above the maximum {self.max:g}")
        if self.type == "enum" and value not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(self.choices)}")
        if self.type == "file" and not Path(value).is_file():
            raise ConfigError(f"{where}: no file {value}")
        if self.type == "dir" and not Path(value).is_dir():
            raise ConfigError(f"{where}: no directory {value}")
        if self.type in ("file", "dir"):
            value = str(Path(value).resolve())
        return value


@dataclass(frozen=True)
class Phase:
    id: str
    title: str
    description: str
    needs: tuple[str, ...]
    state: str
    preconditions: tuple[str, ...]
    postconditions: tuple[str, ...]
    artifacts: tuple[str, ...]
    command: tuple[str, ...]


@dataclass(frozen=True)
class FormulaSpec:
    name: str
    version: int
    description: str
    path: Path
    sha256: str
    variables: dict[str, Variable] = field(default_factory=dict)
    phases: tuple[Phase, ...] = ()

    def resolve(self, given: dict[str, str]) -> dict[str, Any]:
        """Every variable's value: given, else its default; refuses unknown or missing ones."""
        unknown = sorted(set(given) - set(self.variables))
        if unknown:
            raise ConfigError(
                f"formula {self.name}: unknown variable(s) {', '.join(unknown)}; it takes "
                + ", ".join(sorted(self.variables))
            )
        values = {}
        for name, var in self.variables.items():
            if name in given:
                values[name] = var.parse(given[name])
            elif var.required:
                raise ConfigError(
                    f"formula {self.name}: --var {name}=… is required ({var.description})"
                    + (f"; one of {', '.join(var.choices)}" if var.choices else "")
                )
            else:
                values[name] = var.parse(var.default)
        return values


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what} must be a list of strings")
    return tuple(value)


def load_formula(name_or_path: str) -> FormulaSpec:
    """Read ``configs/formulas/<name>.formula.toml`` (or a path) and check its structure."""
    path = Path(name_or_path)
    if not path.is_file():
        path = FORMULA_DIR / f"{name_or_path}.formula.toml"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".formula.toml") for p in FORMULA_DIR.glob("*.toml"))
        raise ConfigError(f"no formula {name_or_path!r}; known: {', '.join(known) or 'none'}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    variables = {}
    for name, raw in (data.get("vars") or {}).items():
        if not isinstance(raw, dict) or raw.get("type") not in TYPES:
            raise ConfigError(f"{path}: vars.{name}.type must be one of {', '.join(TYPES)}")
        if not raw.get("required") and "default" not in raw:
            raise ConfigError(f"{path}: vars.{name} needs a default or required = true")
        variables[name] = Variable(
            name=name,
            type=raw["type"],
            description=str(raw.get("description", "")),
            default=raw.get("default"),
            required=bool(raw.get("required", False)),
            choices=tuple(raw.get("choices", ())),
            min=raw.get("min"),
            max=raw.get("max"),
        )
    phases = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("steps") or []):
        where = f"{path}: steps[{i}]"
        if not isinstance(raw, dict) or not raw.get("id"):
            raise ConfigError(f"{where} needs an id")
        needs = _strings(raw.get("needs", []), f"{where}.needs")
        missing = [n for n in needs if n not in seen]
        if missing:
            raise ConfigError(f"{where} ({raw['id']}) needs {missing}, not defined before it")
        phases.append(
            Phase(
                id=raw["id"],
                title=str(raw.get("title", raw["id"])),
                description=str(raw.get("description", "")),
                needs=needs,
                state=str(raw.get("state", "")),
                preconditions=_strings(raw.get("preconditions", []), f"{where}.preconditions"),
                postconditions=_strings(raw.get("postconditions", []), f"{where}.postconditions"),
                artifacts=_strings(raw.get("artifacts", []), f"{where}.artifacts"),
                command=_strings(raw.get("command", []), f"{where}.command"),
            )
        )
        seen.add(raw["id"])
    if not phases:
        raise ConfigError(f"{path}: a formula needs at least one [[steps]] entry")
    return FormulaSpec(
        name=str(data.get("formula", path.stem)),
        version=int(data.get("version", 1)),
        description=str(data.get("description", "")),
        path=path.resolve(),
        sha256=sha256_file(path),
        variables=variables,
        phases=tuple(phases),
    )
