"""Vendor-specific secret detectors behind a keyword prefilter, loaded from a rule corpus.

The approach of TruffleHog and gitleaks: each detector names the cheap lowercase keywords
that must occur in the text before its regex runs. The rules are data (``rules/vendor.toml``,
gitleaks' rule schema): a hand-kept node0 section, each rule with a test, and a section
generated from gitleaks' rule set by :mod:`corpus.scrub.import_gitleaks` (see there for how it
is kept current). Every match is *sure* unless the value is a documented example or
placeholder, below the rule's entropy floor, or on the rule's allowlist.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from base.errors import ConfigError
from corpus.scrub.findings import Finding, looks_like_placeholder, shannon_entropy

RULES_FILE = Path(__file__).with_name("rules") / "vendor.toml"
_FLAGS = {"S": re.S, "I": re.I}


@dataclass(frozen=True)
class VendorRule:
    """One detector: placeholder type, prefilter keywords, a regex and its secret group."""

    type: str
    keywords: tuple[str, ...]
    pattern: re.Pattern[str]
    source: str = "node0"
    secret_group: int | str | None = None
    """``"secret"``, a group number, or None: the first group that matched, else the match."""
    entropy: float = 0.0
    allow: tuple[re.Pattern[str], ...] = ()


def _type_name(rule_id: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", rule_id.lower()).strip("_")


def load_rules(path: Path = RULES_FILE) -> tuple[VendorRule, ...]:
    """Parse and compile a rule file.

    Raises:
        ConfigError: the file is missing, not TOML, or a rule lacks a field or does not compile.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"vendor rule file {path}: {exc}") from exc
    rules = []
    for i, raw in enumerate(doc.get("rules", [])):
        try:
            rid, regex, keywords = raw["id"], raw["regex"], raw["keywords"]
            flags = 0
            for f in raw.get("flags", []):
                flags |= _FLAGS[f]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # RE2's "[[" reads as a set
                pattern = re.compile(regex, flags)
                allow = tuple(re.compile(a) for a in raw.get("allow", []))
        except (KeyError, re.error) as exc:
            raise ConfigError(f"vendor rule #{i + 1} in {path}: {exc!r}") from exc
        group: int | str | None = raw.get("secretGroup")
        if group is None and "secret" in pattern.groupindex:
            group = "secret"
        rules.append(
            VendorRule(
                type=_type_name(rid),
                keywords=tuple(k.lower() for k in keywords),
                pattern=pattern,
                source=raw.get("source", "node0"),
                secret_group=group,
                entropy=float(raw.get("entropy", 0.0)),
                allow=allow,
            )
        )
    return tuple(rules)


@cache
def _index() -> tuple[tuple[VendorRule, ...], dict[str, tuple[VendorRule, ...]]]:
    rules = load_rules()
    by_keyword: dict[str, list[VendorRule]] = defaultdict(list)
    for rule in rules:
        for k in rule.keywords:
            by_keyword[k].append(rule)
    return rules, {k: tuple(v) for k, v in by_keyword.items()}


def _span(rule: VendorRule, m: re.Match[str]) -> tuple[int, int]:
    if rule.secret_group is not None:
        return m.span(rule.secret_group)
    for g in range(1, (m.re.groups or 0) + 1):
        if m.group(g):
            return m.span(g)
    return m.span()


def scan_vendor(text: str, lowered: str) -> list[Finding]:
    """All vendor findings in ``text`` (``lowered`` is ``text.lower()``, shared by the layers)."""
    _, by_keyword = _index()
    active: dict[int, VendorRule] = {}
    for k, rules in by_keyword.items():
        if k in lowered:
            for rule in rules:
                active[id(rule)] = rule
    found: list[Finding] = []
    node0_spans: list[tuple[int, int]] = []
    # node0 rules first: their placeholder types are the established names; an imported
    # rule's finding on the same span adds nothing
    for rule in sorted(active.values(), key=lambda r: r.source != "node0"):
        for m in rule.pattern.finditer(text):
            start, end = _span(rule, m)
            value = text[start:end]
            if start < 0 or not value:
                continue
            if "EXAMPLE" in value.upper() or looks_like_placeholder(value, references=False):
                continue
            if rule.entropy and shannon_entropy(value) < rule.entropy:
                continue
            if any(a.search(value) for a in rule.allow):
                continue
            if rule.source == "node0":
                node0_spans.append((start, end))
            elif any(a < end and start < b for a, b in node0_spans):
                continue
            found.append(Finding(start, end, rule.type, "SECRET", "sure", f"vendor:{rule.type}"))
    return found
