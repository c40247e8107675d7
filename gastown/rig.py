"""A rig on disk: its name, bead prefix, sharing opt-in, and file discovery."""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from base.errors import ConfigError, DataError
from gastown.layout import RIG_SETTINGS


@dataclass(frozen=True)
class Rig:
    """One rig directory. ``share_across_rigs`` is the rig's own opt-in (default: False)."""

    name: str
    root: Path
    bead_prefix: str
    share_across_rigs: bool
    declared_name: str | None = None  # ``[rig] name`` as written; None when rig.toml has none

    def files(
        self, patterns: list[str], exclude: list[str], *, under: str | None = None
    ) -> list[str]:
        """Files matching ``patterns``, as sorted POSIX paths relative to the rig root."""
        found: set[str] = set()
        for pattern in patterns:
            for p in self.root.glob(pattern):
                if p.is_file():
                    found.add(p.relative_to(self.root).as_posix())
        out = []
        for rel in sorted(found):
            if any(fnmatch.fnmatch(rel, x) for x in exclude):
                continue
            if under is not None and not rel.startswith(under.rstrip("/") + "/"):
                continue
            out.append(rel)
        return out


def load_rig(path: str | Path) -> Rig:
    """Read ``rig.toml`` (optional) from a rig directory.

    Raises:
        DataError: the directory does not exist.
        ConfigError: ``rig.toml`` exists but is not valid.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"rig directory {root} does not exist")
    settings: dict = {}
    toml_path = root / RIG_SETTINGS
    if toml_path.is_file():
        try:
            settings = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml_path} is not valid TOML: {exc}") from exc
    rig = settings.get("rig", {})
    corpus = settings.get("corpus", {})
    share = corpus.get("share_across_rigs", False)
    if not isinstance(share, bool):
        raise ConfigError(f"{toml_path}: corpus.share_across_rigs must be true or false")
    declared = rig.get("name")
    declared = declared if isinstance(declared, str) and declared else None
    return Rig(
        name=declared or root.resolve().name,
        declared_name=declared,
        root=root,
        bead_prefix=str(rig.get("bead_prefix", "")),
        share_across_rigs=share,
    )
