"""Context detectors: a secret-named key assigned a literal, passwords in URLs, auth headers.

These find credentials that have no vendor prefix (database passwords, internal tokens) by
their context. A literal value is *sure* unless it looks like a placeholder or a reference
(``$VAR``, ``os.environ[...]``, ``<token>``, ``****``); see
:func:`~corpus.scrub.findings.looks_like_placeholder`.
"""

from __future__ import annotations

import re

from corpus.scrub.findings import Finding, looks_like_placeholder

_KEYWORDS = (
    "pass",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "credential",
    "key",
    "private_key",
    "access_key",
    "auth",
    "://",
    "--p",
    " -p",
    " -a",
    "sig=",
    "signature=",
    "credential=",
)

# A key that *ends* with a secret word: DB_PASSWORD, github_token, clientSecret, "api-key".
# Keys ending in "key" are one regex branch (``kkey``) and qualified afterwards by
# :data:`_SECRET_KEY_NAMES` (one branch per qualifier would double the regex's cost).
_KEY = (
    r"(?P<key>[A-Za-z0-9_.\-]*?(?:passw(?:or)?d|passwd|pwd|(?<![A-Za-z])pass|secret|token"
    r"|credentials?|(?P<kkey>key(?:[_\-]?base)?)))"
)
# "<qualifier> key" names a secret (apiKey, AZURE_STORAGE_KEY, encryption_key, SECRET_KEY,
# secret_key_base); cache_key, primary_key, public_key, sort_key, … do not.
_SECRET_KEY_NAMES = re.compile(
    r"(?:api|access|private|auth|signing|storage|account|master|encryption|decryption|secret"
    r"|client|app|shared|session|hmac|jwt|cookie|webhook|license|service|admin|bot|cipher"
    r"|crypt|sas)key(?:base)?$"
)


def _secret_key_name(key: str) -> bool:
    return bool(_SECRET_KEY_NAMES.search(re.sub(r"[^a-z0-9]", "", key.lower())))


_ASSIGN = re.compile(
    r"(?<![A-Za-z0-9<])" + _KEY + r"[\"']?[ \t]*(?::=|=>|=|:)[ \t]*"
    r"(?:(?P<q>[\"'`])(?P<qval>[^\"'`\n]{3,200})(?P=q)|(?P<val>[^\s\"'`,;)}\]\\]{4,200}))",
    re.I,
)
_FLAG = re.compile(
    r"(?<![\w-])--?(?P<key>password|passwd|token|secret|api-key|apikey|auth-token|access-token)"
    r"(?:=|[ \t]+)(?P<q>[\"']?)(?P<val>[^\s\"']{4,200})(?P=q)",
    re.I,
)
# XML / HTML-ish elements: <password>…</password>, <apiKey>…</apiKey>
_XML_ELEMENT = re.compile(
    r"<(?P<tag>[\w:\-]*?(?:passw(?:or)?d|passwd|secret|token|api[_\-]?key|apikey"
    r"|access[_\-]?key|private[_\-]?key|credentials?))>(?P<val>[^<>\s]{3,200})</(?P=tag)>",
    re.I,
)
# Client tools whose password flag is short or glued to its value: mysql -pSECRET,
# redis-cli -a SECRET, sshpass -p SECRET.
_TOOL_PASSWORD = re.compile(
    r"\b(?:(?:mysql|mysqldump|mysqladmin|mariadb|mariadb-dump)\b[^\n|;&]{0,300}?"
    r"\s-p(?P<glued>[^\s\"',;]{3,200})"
    r"|(?:redis-cli|valkey-cli)\b[^\n|;&]{0,300}?"
    r"\s-a[ \t]+(?P<q1>[\"']?)(?P<redis>[^\s\"',;]{3,200})(?P=q1)"
    r"|sshpass[ \t]+-p[ \t]*(?P<q2>[\"']?)(?P<sshpass>[^\s\"',;]{3,200})(?P=q2))"
)
# Signed-URL query parameters (Azure SAS sig, S3/GCS presigned signatures and session tokens).
_URL_SIGNATURE = re.compile(
    r"(?i)[?&](?:sig|signature|x-amz-signature|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|x-amz-credential)=(?P<val>[^&\s#\"'<>]{16,})"
)
_URL_PASSWORD = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,20}://(?P<user>[^\s:/@'\"<>]{1,64}):"
    r"(?P<val>[^\s@/'\"<>]{1,128})@[A-Za-z0-9.\-\[\]]+"
)
_AUTH_HEADER = re.compile(
    r"(?i:\b(?:authorization|proxy-authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+"
    r"|\bbearer\s+)(?P<val>[A-Za-z0-9+/_.\-=~]{16,})"
)
# Keys that end with a secret word but name something harmless.
_BENIGN_KEYS = re.compile(
    r"(?i)(?:^|[_.\-])(?:max|min|num|n|count|total|input|output|prompt|completion|next|prev|"
    r"page|cancel|csrf_?field|bos|eos|pad|unk|sep|cls|mask|special)[_.\-]?tokens?$"
    r"|(?i:^(?:tokens?|token_type|tokenizer)$)"
)
_BOOL_OR_NUMBER = re.compile(r"(?i)^(?:true|false|yes|no|on|off|\d{1,5}(?:\.\d+)?)$")


def literal_secret(value: str) -> bool:
    """Whether a value assigned to a secret-named key is a literal secret (not a placeholder,
    reference, flag, number, path, file name or the name of another variable)."""
    return _literal_secret(value)


def _literal_secret(value: str) -> bool:
    if looks_like_placeholder(value) or _BOOL_OR_NUMBER.match(value):
        return False
    # a path, a URL, or a file name is where a secret lives, not the secret
    if value.startswith(("/", "./", "~/", "http://", "https://", "file:")):
        return False
    if re.fullmatch(r"[\w\-]+\.(?:pem|key|txt|json|ya?ml|env|cfg|ini|toml|gpg|asc)", value):
        return False
    # SCREAMING_SNAKE names another variable; kebab/snake lowercase words name a secret store
    # entry (e.g. "db-credentials"), neither is the value itself
    if re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", value):
        return False
    return not re.fullmatch(r"[a-z]+(?:[-_][a-z]+)+", value)


def _kind(key: str) -> str:
    k = key.lower()
    return "password" if ("pass" in k or "pwd" in k) else "secret"


def scan_assignments(text: str, lowered: str) -> list[Finding]:
    """Keyword assignments, CLI flags, URL credentials and Authorization headers."""
    if not any(k in lowered for k in _KEYWORDS) and "bearer" not in lowered:
        return []
    found: list[Finding] = []
    for m in _ASSIGN.finditer(text):
        key = m.group("key")
        if _BENIGN_KEYS.search(key) or (m.group("kkey") and not _secret_key_name(key)):
            continue
        group = "qval" if m.group("qval") is not None else "val"
        value = m.group(group)
        if _literal_secret(value):
            found.append(
                Finding(
                    m.start(group), m.end(group), _kind(key), "SECRET", "sure", "context:assignment"
                )
            )
    for m in _FLAG.finditer(text):
        if _literal_secret(m.group("val")):
            found.append(
                Finding(
                    m.start("val"),
                    m.end("val"),
                    _kind(m.group("key")),
                    "SECRET",
                    "sure",
                    "context:cli_flag",
                )
            )
    if "</" in text:
        for m in _XML_ELEMENT.finditer(text):
            if _literal_secret(m.group("val")):
                found.append(
                    Finding(
                        m.start("val"),
                        m.end("val"),
                        _kind(m.group("tag")),
                        "SECRET",
                        "sure",
                        "context:xml_element",
                    )
                )
    for m in _TOOL_PASSWORD.finditer(text):
        group = next(g for g in ("glued", "redis", "sshpass") if m.group(g) is not None)
        value = m.group(group)
        if value.endswith(".") and not m.group("q1") and not m.group("q2"):
            value = value[:-1]  # end of a sentence
        if len(value) >= 3 and _literal_secret(value):
            start = m.start(group)
            found.append(
                Finding(start, start + len(value), "password", "SECRET", "sure", "context:cli_flag")
            )
    if "?" in text:
        for m in _URL_SIGNATURE.finditer(text):
            if not looks_like_placeholder(m.group("val")):
                found.append(
                    Finding(
                        m.start("val"),
                        m.end("val"),
                        "url_signature",
                        "SECRET",
                        "sure",
                        "context:url_signature",
                    )
                )
    for m in _URL_PASSWORD.finditer(text):
        value = m.group("val")
        if not looks_like_placeholder(value) and value.lower() not in ("pass", "pw", "pwd"):
            found.append(
                Finding(
                    m.start("val"),
                    m.end("val"),
                    "url_password",
                    "SECRET",
                    "sure",
                    "context:url_password",
                )
            )
    for m in _AUTH_HEADER.finditer(text):
        value = m.group("val")
        if not looks_like_placeholder(value):
            found.append(
                Finding(
                    m.start("val"),
                    m.end("val"),
                    "bearer_token",
                    "SECRET",
                    "sure",
                    "context:auth_header",
                )
            )
    return found
