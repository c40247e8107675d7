"""The high-entropy check: long random-looking tokens without a recognisable vendor or context.

A hit is *uncertain* (the example goes to quarantine, nothing is guessed). Look-alikes that are
not secrets are excluded first: identifiers (camelCase / snake_case words), UUIDs and hex
digests (lowercase or hex-only tokens), base64 that decodes to readable text, integrity hashes
(``sha512-…``, ``h1:…``), data URIs, paths, and our own placeholders.
"""

from __future__ import annotations

import base64
import binascii
import math
import re

from corpus.scrub.findings import Finding, shannon_entropy

_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{20,}={0,2}(?![A-Za-z0-9+/_\-])")
_HASH_PREFIX = re.compile(
    r"(?i)(?:sha(?:1|224|256|384|512)[-:]|h1:|base64,|md5[-:]|blake2b?[-:]"
    r"|integrity[\"']?\s*[:=]\s*[\"']?)$"
)
# Identifiers that are public by design: publishable keys, API object and message ids.
_PUBLIC_ID = re.compile(
    r"^(?:(?:pk_(?:live|test)|toolu|srvtoolu|msg|msgbatch|req|ch|cus|pi|pm|evt|sub|prod"
    r"|price|acct|txn|file|run|thread|asst|call|chatcmpl|resp|batch|in|ii|vs|step)_"
    # OpenAI's dash-separated object ids: chatcmpl-…, org-…, file-…, ftjob-…
    r"|(?:chatcmpl|cmpl|org|file|ftjob|ftckpt|ft|modr|batch|user)-)"
)
# libp2p peer ids / IPFS CIDv0 (base58 multihashes of public keys), e.g. in multiaddrs
# "/ip4/…/tcp/…/p2p/12D3KooW…": public by design
_PEER_ID = re.compile(r"(?:12D3KooW|16Uiu2HA|Qm)[1-9A-HJ-NP-Za-km-z]{40,}")
_HASH_TOKEN = re.compile(r"(?i)^(?:sha(?:1|224|256|384|512)|md5|blake2b?)[-:]")
_PUBLIC_KEY_BEFORE = re.compile(r"(?:ssh-(?:rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-ssh-\S+)\s+$")
_PUBLIC_PEM = re.compile(
    r"-----BEGIN (?:PUBLIC KEY|RSA PUBLIC KEY|CERTIFICATE|CERTIFICATE REQUEST"
    r"|PGP PUBLIC KEY BLOCK|X509 CRL)-----.*?-----END [A-Z0-9 ]+-----",
    re.S,
)
_PIECES = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_VOWELS = set("aeiouy")


def _wordlike_ratio(token: str) -> float:
    """Share of letters that sit in pronounceable, word-sized pieces (``getUserName`` → 1.0)."""
    letters = sum(c.isalpha() for c in token)
    if not letters:
        return 1.0
    good = 0
    for piece in _PIECES.findall(token):
        if not piece.isalpha() or len(piece) < 3 or len(piece) > 14:
            continue
        low = piece.lower()
        vowels = sum(c in _VOWELS for c in low)
        if 0.2 <= vowels / len(low) <= 0.7 and not re.search(r"[^aeiouy]{5}", low):
            good += len(piece)
    return good / letters


def _is_base64_text(token: str) -> bool:
    core = token.rstrip("=")
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(core + "=" * (-len(core) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) >= 12:
            printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in raw)
            if printable / len(raw) >= 0.9:
                # "user:password" (HTTP Basic, docker config "auth") is a credential, not text
                return not _CREDENTIAL_PAIR.fullmatch(raw.decode("latin-1").strip())
    return False


_CREDENTIAL_PAIR = re.compile(r"[\w.@+\-]{1,64}:[^\s:]{6,200}")


def _mixed(seg: str, n: int) -> bool:
    return (
        len(seg) >= n
        and re.search(r"[a-z]", seg) is not None
        and re.search(r"[A-Z]", seg) is not None
        and re.search(r"\d", seg) is not None
    )


def _threshold(n: int) -> float:
    return min(4.2, 0.82 * math.log2(n))


def is_high_entropy_secret(token: str, before: str = "") -> bool:
    """Whether ``token`` (with up to ~20 preceding characters ``before``) looks like a secret."""
    core = _PEER_ID.sub("", token.rstrip("="))
    if len(core) < 20 or _HASH_PREFIX.search(before) or _PUBLIC_KEY_BEFORE.search(before):
        return False
    if _HASH_TOKEN.match(core) or _PUBLIC_ID.match(core):
        return False
    if not (re.search(r"[a-z]", core) and re.search(r"[A-Z]", core) and re.search(r"\d", core)):
        return False  # hex digests, UUIDs, base32 store paths, words, SCREAMING_CASE names
    if core.startswith("/") or "//" in core:
        return False  # a path or URL
    if core.count("/") >= 2 and not any(_mixed(seg, 12) for seg in core.split("/")):
        return False  # a relative path; base64 key material has long mixed-case runs
    if shannon_entropy(core) < _threshold(len(core)):
        return False
    if _wordlike_ratio(core) >= 0.6:
        return False
    return not _is_base64_text(token)


def _word_prefix(text: str, pos: int) -> str:
    """The part of the whitespace-delimited word that precedes ``pos``."""
    window = text[max(0, pos - 300) : pos]
    cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
    return window[cut + 1 :]


def scan_entropy(text: str) -> list[Finding]:
    """Uncertain findings for high-entropy tokens in ``text``."""
    found: list[Finding] = []
    public = (
        [(b.start(), b.end()) for b in _PUBLIC_PEM.finditer(text)] if "-----BEGIN" in text else []
    )
    for m in _TOKEN.finditer(text):
        if any(a <= m.start() < b for a, b in public):
            continue  # certificates and public keys are meant to be shared
        before = text[max(0, m.start() - 20) : m.start()]
        if "://" in _word_prefix(text, m.start()):
            continue  # part of a URL without a credential keyword (those are context findings)
        if is_high_entropy_secret(m.group(), before):
            found.append(
                Finding(m.start(), m.end(), "high_entropy", "SECRET", "uncertain", "entropy")
            )
    return found
