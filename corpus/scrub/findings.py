"""Findings of the scrub layers and the rules that turn them into placeholders.

A finding is *sure* (the span is replaced by a typed placeholder such as
``<SECRET:github_token>`` or ``<PII:email>``) or *uncertain* (nothing is replaced; the example
that holds it goes to quarantine with the finding as the reason).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Confidence = Literal["sure", "uncertain"]
Category = Literal["SECRET", "PII"]


@dataclass(frozen=True, order=True)
class Finding:
    """One detected span of ``text[start:end]``."""

    start: int
    end: int
    type: str
    """Placeholder type, e.g. ``github_token``, ``email``, ``high_entropy``."""
    category: Category
    confidence: Confidence
    detector: str
    """Layer and rule that found it, e.g. ``vendor:github_token`` or ``detect-secrets:…``."""

    @property
    def placeholder(self) -> str:
        return f"<{self.category}:{self.type}>"

    def describe(self, text: str) -> str:
        """A reason line that never repeats the secret: type, detector, offset, length, shape."""
        value = text[self.start : self.end]
        return (
            f"{self.type} via {self.detector} at char {self.start} "
            f"(len {len(value)}, starts {mask(value)})"
        )


def mask(value: str, keep: int = 3) -> str:
    """The first ``keep`` characters, then ``…``: enough to find the spot, not enough to use it."""
    return (value[:keep] + "…") if len(value) > keep else "…"


def shannon_entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_PLACEHOLDER_WORDS = (
    "example",
    "sample",
    "dummy",
    "placeholder",
    "changeme",
    "change_me",
    "redacted",
    "your_",
    "your-",
    "yourpassword",
    "yourtoken",
    "<",
    "${",
    "{{",
    "%(",
    "xxxx",
    "****",
    "....",
    "todo",
    "fixme",
    "insert",
    "replace",
    "notasecret",
    "not-a-secret",
    "fake",
    "test123",
)
_PLACEHOLDER_EXACT = {
    "password",
    "passwd",
    "secret",
    "token",
    "pass",
    "none",
    "null",
    "nil",
    "true",
    "false",
    "undefined",
    "empty",
    "string",
    "str",
    "required",
    "optional",
    "default",
    "hidden",
    "mysecret",
    "mypassword",
    "secretpassword",
    "apikey",
    "api_key",
    "value",
    "foo",
    "bar",
    "foobar",
    "admin",
    "root",
    "user",
    "username",
    "test",
    "testing",
    "env",
    "environ",
}


def looks_like_placeholder(value: str, *, references: bool = True) -> bool:
    """True for values that stand in for a secret rather than being one.

    Covers template syntax (``<token>``, ``${TOKEN}``, ``{{ token }}``), masked values
    (``****``), elided values (``sk-...``), documentation examples (``...EXAMPLE``), variable
    references (``$TOKEN``, ``os.environ[...]``, ``settings.TOKEN``), and our own placeholders.
    ``references=False`` skips the reference-syntax checks (calls, dotted names): for values a
    vendor regex matched, whose shape already rules those out.
    """
    v = value.strip().strip("'\"`")
    low = v.lower()
    if not v or low in _PLACEHOLDER_EXACT:
        return True
    if v.startswith("$") or v.endswith("}"):
        return True
    # YAML tags / anchors / aliases (!vault, &creds, *creds), %(name)s and %VAR% templates, a
    # masked "****…"; a literal that merely starts with one of these characters ("!Xk29#q…")
    # is still a secret
    if re.fullmatch(r"[!&*][A-Za-z_][\w.\-]*|%\(\w+\)[sdr]?|%\w+%|%[sd]|\*+.*", v):
        return True
    if any(w in low for w in _PLACEHOLDER_WORDS):
        return True
    if len(set(v)) <= 2:  # "xxxxxxxx", "00000000", "--------"
        return True
    if v.endswith(("...", "…")) or "..." in v[:12]:  # elided: "sk-...", "ghp_abc..."
        return True
    if not references:
        return False
    # function call or subscript: a reference, not a literal (getenv("X"), os.environ["X"]);
    # a "(" or "[" inside a random literal (Django keys use them) does not make it one
    if re.match(r"[A-Za-z_][\w.]*\s*[(\[]", v):
        return True
    # dotted attribute reference such as settings.SECRET_KEY or process.env.TOKEN; dotted
    # tokens with random segments (SendGrid "SG.<22>.<43>", Vault "hvs.<…>") are not
    return bool(re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v)) and not any(
        _random_segment(seg) for seg in v.split(".")
    )


def _random_segment(seg: str) -> bool:
    """A 12+ character segment that mixes upper case, lower case and digits: key material,
    not the name of an attribute."""
    return (
        len(seg) >= 12
        and any(c.isupper() for c in seg)
        and any(c.islower() for c in seg)
        and any(c.isdigit() for c in seg)
    )


_LAYER_RANK = {"vendor": 0, "detect-secrets": 1, "context": 2, "pii": 3, "entropy": 4}


def _rank(f: Finding) -> tuple[int, int, int, str]:
    layer = _LAYER_RANK.get(f.detector.split(":", 1)[0], 9)
    return (f.confidence != "sure", layer, -(f.end - f.start), f.type)


def resolve(findings: list[Finding]) -> list[Finding]:
    """Merge overlapping findings into one span each, deterministically.

    The merged span is the union of the overlapping spans (whatever any layer considered part of
    a secret is replaced). It is sure if any member is sure; its type and detector come from
    the best member: sure before uncertain, vendor rules before the library, context rules,
    personal data and entropy, then the longer span.
    """
    merged: list[Finding] = []
    cluster: list[Finding] = []
    end = -1
    for f in sorted(findings):
        if cluster and f.start >= end:
            merged.append(_merge(cluster))
            cluster = []
        cluster.append(f)
        end = max(end, f.end) if len(cluster) > 1 else f.end
    if cluster:
        merged.append(_merge(cluster))
    return merged


def _merge(cluster: list[Finding]) -> Finding:
    best = min(cluster, key=_rank)
    return Finding(
        min(f.start for f in cluster),
        max(f.end for f in cluster),
        best.type,
        best.category,
        best.confidence,
        best.detector,
    )


def apply(text: str, findings: list[Finding]) -> str:
    """Replace every sure finding by its placeholder (findings must not overlap)."""
    out: list[str] = []
    pos = 0
    for f in sorted(findings):
        if f.confidence != "sure":
            continue
        out.append(text[pos : f.start])
        out.append(f.placeholder)
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
