"""Refresh the gitleaks part of the vendor rule corpus (``rules/vendor.toml``).

Usage::

    python -m corpus.scrub.import_gitleaks PATH/TO/gitleaks.toml [--commit SHA]

gitleaks (MIT licence) keeps the most complete open rule set of vendor credential formats.
This tool copies its *prefix* rules -- those that find a token by its own shape (``glpat-``,
``dop_v1_``, ``xapp-``, ...) -- into the generated section of ``rules/vendor.toml``, keeping
each rule's id, regex, keywords (the prefilter), entropy floor, secret group and secret
allowlists. Rules that find a value only by a vendor word next to an assignment
(``[\\w.-]{0,50}?(?:adafruit)...``) are left out: the context layer finds every
``<name>_key = <literal>`` already, with placeholder and reference checks. Rules that another
layer owns are skipped by id (:data:`SKIP`). The node0 section of the file is not touched.

The rules are data: refreshing is running this tool on a newer gitleaks.toml, then
``pytest tests/corpus`` (every rule must compile under Python's ``re`` and keep the labeled
sets' figures); a new format seen in an audit sample becomes a node0 rule with a test.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

RULES_FILE = Path(__file__).with_name("rules") / "vendor.toml"
MARK = "# ---- generated from gitleaks"
SKIP = {
    "private-key",  # node0's pem_private_key needs key material after the header
    "curl-auth-header",  # the context layer's Authorization-header detector
    "curl-auth-user",  # URL userinfo / -u user:password: the context layer
    "jwt-base64",  # base64 of a JWT: the entropy layer
    "kubernetes-secret-yaml",  # data: values in a Secret: context assignments
    "generic-api-key",
    "sidekiq-sensitive-url",  # URL userinfo: the context layer
    "nuget-config-password",  # XML password element: the context layer
}
_GENERIC = "[\\w.-]{0,50}?"


def go_to_python(regex: str) -> str:
    """Translate the RE2 forms gitleaks uses that Python's ``re`` reads differently.

    A ``(?i)`` in the middle of a pattern (RE2: case-insensitive from there on) becomes a global
    flag: a slightly wider match, which for a scrubber errs the safe way. ``\\z`` is ``\\Z``.
    """
    if "(?i)" in regex[4:] or (regex.startswith("(?i)") and "(?i)" in regex[4:]):
        regex = "(?i)" + regex.replace("(?i)", "")
    return regex.replace("\\z", "\\Z")


def _toml_str(s: str) -> str:
    if "'''" in s:
        raise ValueError(f"cannot write {s!r} as a TOML literal string")
    return f"'''{s}'''"


def convert(doc: dict, commit: str) -> tuple[list[str], list[str]]:
    """TOML lines for the importable rules, and the ids left out (with why)."""
    lines: list[str] = []
    left_out: list[str] = []
    for rule in doc.get("rules", []):
        rid = rule.get("id", "?")
        regex = rule.get("regex")
        if rid in SKIP:
            left_out.append(f"{rid}: owned by another layer")
            continue
        if not regex or _GENERIC in regex[:30]:
            left_out.append(f"{rid}: keyword-assignment rule (context layer)")
            continue
        if not rule.get("keywords"):
            left_out.append(f"{rid}: no keywords to prefilter on")
            continue
        py = go_to_python(regex)
        try:
            re.compile(py)
        except re.error as exc:
            left_out.append(f"{rid}: does not compile under Python re ({exc})")
            continue
        lines += ["[[rules]]", f'id = "{rid}"', f'source = "gitleaks@{commit}"']
        lines.append("keywords = [" + ", ".join(f'"{k.lower()}"' for k in rule["keywords"]) + "]")
        lines.append(f"regex = {_toml_str(py)}")
        if "secretGroup" in rule:
            lines.append(f"secretGroup = {int(rule['secretGroup'])}")
        if "entropy" in rule:
            lines.append(f"entropy = {float(rule['entropy'])}")
        allow = [
            a
            for a in rule.get("allowlists", [])
            if a.get("regexTarget", "secret") == "secret" and a.get("regexes")
        ]
        if allow:
            regexes = [go_to_python(r) for a in allow for r in a["regexes"]]
            lines.append("allow = [" + ", ".join(_toml_str(r) for r in regexes) + "]")
        lines.append("")
    return lines, left_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gitleaks_toml", help="path to gitleaks' config/gitleaks.toml")
    ap.add_argument("--commit", default="unknown", help="gitleaks commit the file comes from")
    args = ap.parse_args(argv)
    doc = tomllib.loads(Path(args.gitleaks_toml).read_text(encoding="utf-8"))
    lines, left_out = convert(doc, args.commit)
    current = RULES_FILE.read_text(encoding="utf-8")
    head = current.split(MARK, 1)[0].rstrip("\n")
    body = "\n".join(lines)
    RULES_FILE.write_text(
        f"{head}\n\n{MARK} {args.commit} by corpus/scrub/import_gitleaks.py; do not edit by hand\n"
        f"# left out: {len(left_out)} rules (keyword-assignment rules and those in SKIP)\n\n{body}",
        encoding="utf-8",
    )
    print(f"{RULES_FILE}: {body.count('[[rules]]')} gitleaks rules, {len(left_out)} left out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
