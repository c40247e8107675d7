"""Credentials found by what surrounds them, scored by context strength and value shape.

Each detector finds a candidate value and says how strongly its context names a secret:

* 3 -- the context can only hold a credential: a database client's password flag
  (``mysql -p'…'``, ``-pVALUE``), ``sshpass -p``, ``curl -u user:VALUE``, a ``.netrc``
  ``password`` entry, a ``.pgpass`` line, an ``Authorization`` header of any scheme;
* 2 -- a URL query parameter named ``token``/``access_token``/``key``/``secret``/``sig``/…,
  prose that gives a password ("the staging DB password is …", "passphrase: …"), a line
  shaped like ``.pgpass`` without the file named;
* 1.5 -- prose that gives a token, secret or key ("token: …"), for values the high-entropy
  layer does not already hold in doubt (a weak context does not overrule that layer's
  quarantine).

:func:`shape_score` rates the value itself from 0 (a placeholder, a reference, a plain word)
to 4 (long, several character classes, high entropy). A candidate whose context + shape
reaches ``sure`` is replaced; one that reaches only ``uncertain`` quarantines its example;
below that it is ignored. Both thresholds are in the build config (``scrub.sure_score``,
``scrub.uncertain_score``).

The patterns read text as it is stored: a snippet inside a JSON string has ``\\n`` for a
newline and ``\\"`` for a quote, so a word boundary also counts after an escaped newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corpus.scrub.entropy import is_high_entropy_secret
from corpus.scrub.findings import Finding, looks_like_placeholder, shannon_entropy

# a boundary before a word: start, a non-word character, or a JSON-escaped \n / \t
_B = r"(?:(?<=\\[nrt])|(?<![\w\-/.]))"
_SEP = r"(?:[ \t]|\\[nrt]|\n)+"  # whitespace, also JSON-escaped
_VAL = r"[^\s\"'`\\]"  # a value character (stops at quotes, escapes and whitespace)

_DB_CLIENT = re.compile(
    _B + r"(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump|mysqlsh|mycli|mysqlimport)\b"
    r"[^\n|;&]{0,300}?[ \t]-p(?:'(?P<sq>[^'\n]{1,200})'|\\?\"(?P<dq>[^\"\\\n]{1,200})\\?\""
    r"|(?P<glued>" + _VAL + r"{1,200}))"
)
_SSHPASS = re.compile(
    _B + r"sshpass[ \t]+-p[ \t]*(?:'(?P<sq>[^'\n]{1,200})'|\\?\"(?P<dq>[^\"\\\n]{1,200})\\?\""
    r"|(?P<glued>" + _VAL + r"{1,200}))"
)
_CURL_USER = re.compile(
    _B + r"(?:curl|wget|http|httpie|xh)\b[^\n|;&]{0,300}?[ \t](?:-u|--user)[ \t=]+['\"]?"
    r"[^\s:'\"\\]{1,64}:(?P<val>" + _VAL + r"{3,200})"
)
_NETRC = re.compile(
    r"(?s)"
    + _B
    + r"(?:machine|default)"
    + _SEP
    + r".{0,300}?"
    + _B
    + r"password"
    + _SEP
    + r"(?P<val>"
    + _VAL
    + r"{1,200})"
)
_PGPASS = re.compile(
    r"(?:^|(?<=\n)|(?<=\\n)|(?<=[ \t]))[A-Za-z0-9_.\-*]+:(?:\d{2,5}|\*):[\w\-*.]+:[\w\-*.@]+:"
    r"(?P<val>[^\s:\"'\\]{1,128})(?=$|\s|\\[nr]|[\"'])"
)
_AUTH_ANY = re.compile(
    r"(?i)\b(?:proxy-)?authorization\\?[\"']?\s*[:=]\s*\\?[\"']?"
    r"(?P<scheme>[A-Za-z][\w\-]{1,20})[ \t]+(?P<val>[^\s\"'\\,]{8,})"
)
_URL_PARAM = re.compile(
    r"(?i)[?&](?:access_token|refresh_token|id_token|token|api_key|apikey|api-key|key|secret"
    r"|client_secret|sig|signature|password|passwd|pwd|auth|code_verifier)=(?P<val>[^&\s#\"'<>\\]{6,})"
)
_PROSE = re.compile(
    r"(?i)(?<![<:])\b(?P<kw>password|passphrase|passwd|pass ?word|pw|token|secret|api[ _\-]?key"
    r"|access key)(?:'s)?(?:[ \t]+(?:for|of|on|to)[ \t]+[\w .\-]{1,30}?)?"
    r"(?:[ \t]+(?:is|was|will be)[ \t]+|[ \t]*:[ \t]*)[`'\"]?(?P<val>[^\s`'\",;]{4,128})"
)
_PLAIN_WORD = re.compile(r"[a-z]+|[A-Z][a-z]+|[A-Z]+")
_TRAILING = ".,;:)]}!?"


@dataclass(frozen=True)
class Candidate:
    """A value found by context, before scoring."""

    start: int
    end: int
    type: str
    detector: str
    strength: float


def shape_score(value: str) -> float:
    """How much ``value`` looks like a credential by itself, 0..4.

    0 for placeholders, references and plain words; then a point each for length >= 8, two
    character classes, three, and Shannon entropy >= 3 bits per character.
    """
    if len(value) < 4 or looks_like_placeholder(value) or _PLAIN_WORD.fullmatch(value):
        return 0.0
    if value.startswith(("/", "./", "~/", "http://", "https://")):
        return 0.0
    classes = sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
            any(not c.isalnum() for c in value),
        )
    )
    score = float(len(value) >= 8) + float(classes >= 2) + float(classes >= 3)
    return score + float(shannon_entropy(value) >= 3.0)


def _value(m: re.Match[str], *groups: str) -> tuple[int, int]:
    for g in groups:
        if m.group(g) is not None:
            start, end = m.span(g)
            if g in ("glued", "val"):
                while end > start and m.string[end - 1] in _TRAILING:
                    end -= 1  # end of a sentence or a bracket, not of the value
            return start, end
    raise AssertionError("no value group matched")


def candidates(text: str, lowered: str) -> list[Candidate]:
    """Every context candidate in ``text`` (``lowered`` is ``text.lower()``)."""
    out: list[Candidate] = []

    def add(m: re.Match[str], kind: str, det: str, strength: float, *groups: str) -> None:
        start, end = _value(m, *groups)
        if end > start:
            out.append(Candidate(start, end, kind, f"context:{det}", strength))

    if "-p" in lowered and ("mysql" in lowered or "maria" in lowered or "mycli" in lowered):
        for m in _DB_CLIENT.finditer(text):
            add(m, "password", "db_client_flag", 3, "sq", "dq", "glued")
    if "sshpass" in lowered:
        for m in _SSHPASS.finditer(text):
            add(m, "password", "sshpass", 3, "sq", "dq", "glued")
    if "-u" in lowered and ("curl" in lowered or "wget" in lowered or "http" in lowered):
        for m in _CURL_USER.finditer(text):
            add(m, "password", "http_user", 3, "val")
    if "password" in lowered and ("machine" in lowered or "default" in lowered):
        for m in _NETRC.finditer(text):
            add(m, "password", "netrc", 3, "val")
    if text.count(":") >= 4:
        strength = 3 if "pgpass" in lowered else 2
        for m in _PGPASS.finditer(text):
            add(m, "password", "pgpass", strength, "val")
    if "authorization" in lowered:
        for m in _AUTH_ANY.finditer(text):
            add(m, "secret", "auth_header", 3, "val")
    if "?" in text and "=" in text:
        for m in _URL_PARAM.finditer(text):
            add(m, "url_secret", "url_param", 2, "val")
    if any(k in lowered for k in ("pass", "pw", "token", "secret", "key")):
        for m in _PROSE.finditer(text):
            kw = m.group("kw").lower()
            strong = kw.startswith("pass") or kw in ("pw", "passwd")
            if not strong and is_high_entropy_secret(m.group("val")):
                continue  # weak context: the entropy layer's doubt (quarantine) stands
            add(m, "password" if strong else "secret", "prose", 2 if strong else 1.5, "val")
    return out


def scan_context(
    text: str, lowered: str, *, sure: float = 5.0, uncertain: float = 3.0
) -> list[Finding]:
    """Scored context findings: *sure* at ``sure`` or above, *uncertain* from ``uncertain``."""
    found: list[Finding] = []
    for c in candidates(text, lowered):
        value = text[c.start : c.end]
        if looks_like_placeholder(value) or value.startswith("<"):
            continue  # a reference, a template or a scrubbed value: nothing to decide
        score = c.strength + shape_score(value)
        if score >= sure:
            found.append(Finding(c.start, c.end, c.type, "SECRET", "sure", c.detector))
        elif score >= uncertain:
            found.append(Finding(c.start, c.end, c.type, "SECRET", "uncertain", c.detector))
    return found
