"""Vendor-specific secret detectors behind a keyword prefilter.

The approach of TruffleHog and gitleaks: each detector names the cheap lowercase keywords
that must occur in the text before its regex runs. detect-secrets 1.5.0 misses several of
these formats on its own (AWS secret keys, ``github_pat_``, ``sk-ant-``, ``sk-proj-``, ``hf_``;
see docs/corpus.md), which is why they are spelled out here. Every match is *sure* unless
the value is a documented example or placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corpus.scrub.findings import Finding, looks_like_placeholder


@dataclass(frozen=True)
class VendorRule:
    """One detector: placeholder type, prefilter keywords, and a regex.

    If the regex has a group named ``secret``, only that group is replaced.
    """

    type: str
    keywords: tuple[str, ...]
    pattern: re.Pattern[str]


def _r(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


_B64 = r"A-Za-z0-9+/"
_END = r"(?![A-Za-z0-9_\-])"

RULES: tuple[VendorRule, ...] = (
    VendorRule(
        "pem_private_key",
        ("private key",),
        _r(
            r"-----BEGIN[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----"
            r"(?:\\n|\\r|\s)+(?:[A-Za-z0-9\-]+: [^\n]*(?:\\n|\s)+)*"  # optional headers (Proc-Type)
            rf"[{_B64}=]{{16,}}"
            r"(?:.*?-----END[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----"
            rf"|(?:(?:\\n|\s)+[{_B64}=]{{16,}})*)",
            re.S,
        ),
    ),
    VendorRule(
        "aws_access_key_id",
        ("akia", "asia", "abia", "acca", "aroa", "aida", "anpa"),
        _r(
            r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA|ANPA|AIPA|ANVA|APKA)"
            r"[A-Z2-7]{16}(?![A-Z0-9])"
        ),
    ),
    VendorRule(
        "aws_secret_access_key",
        ("aws", "secret_access", "secretaccess", "secret access"),
        _r(
            r"(?i:aws.{0,20}?secret|secret.?access.?key)[\w\- ]{0,20}?[\"']?\s*(?:[:=]|=>|:=)"
            rf"\s*[\"']?(?P<secret>[{_B64}]{{40}})(?![{_B64}])"
        ),
    ),
    VendorRule("github_pat", ("github_pat_",), _r(r"\bgithub_pat_[A-Za-z0-9_]{40,255}\b")),
    VendorRule(
        "github_token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        _r(r"\bgh[pousr]_[A-Za-z0-9]{36,251}\b"),
    ),
    VendorRule(
        "gitlab_token",
        ("glpat-", "gldt-", "glrt-"),
        _r(rf"\bgl(?:pat|dt|rt)-[A-Za-z0-9_\-]{{20,}}{_END}"),
    ),
    VendorRule(
        "slack_webhook",
        ("hooks.slack.com",),
        _r(r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}"),
    ),
    VendorRule(
        "slack_token",
        ("xox", "xapp-"),
        _r(r"\b(?:xox[abposre]-[0-9A-Za-z\-]{10,}|xapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{20,})"),
    ),
    VendorRule(
        "stripe_key",
        ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"),
        _r(r"\b(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}|whsec_[A-Za-z0-9]{24,})\b"),
    ),
    VendorRule(
        "anthropic_key",
        ("sk-ant-",),
        _r(rf"\bsk-ant-(?:api|admin|sid|oat)\d{{2}}-[A-Za-z0-9_\-]{{20,}}{_END}"),
    ),
    VendorRule(
        "openai_key",
        ("sk-",),
        _r(
            rf"\bsk-(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{{20,}}"
            rf"|[A-Za-z0-9]{{20}}T3BlbkFJ[A-Za-z0-9]{{20}}|(?!ant-)[A-Za-z0-9]{{32,}}){_END}"
        ),
    ),
    VendorRule("huggingface_token", ("hf_",), _r(r"\bhf_[A-Za-z]{30,40}\b")),
    VendorRule("google_api_key", ("aiza",), _r(rf"\bAIza[0-9A-Za-z_\-]{{35}}{_END}")),
    VendorRule("npm_token", ("npm_",), _r(r"\bnpm_[A-Za-z0-9]{36}\b")),
    VendorRule("pypi_token", ("pypi-",), _r(rf"\bpypi-AgE[A-Za-z0-9_\-]{{50,}}{_END}")),
    VendorRule(
        "sendgrid_key", ("sg.",), _r(rf"\bSG\.[A-Za-z0-9_\-]{{22}}\.[A-Za-z0-9_\-]{{43}}{_END}")
    ),
    VendorRule("twilio_key", ("sk", "ac"), _r(r"\b(?:SK|AC)[0-9a-f]{32}\b")),
    VendorRule(
        "azure_storage_key", ("accountkey",), _r(r"(?i:AccountKey)=(?P<secret>[A-Za-z0-9+/]{86}==)")
    ),
    # More vendors with a fixed, documented prefix (gitleaks / TruffleHog rule shapes).
    VendorRule(
        "digitalocean_token",
        ("dop_v1_", "doo_v1_", "dor_v1_"),
        _r(r"\bdo[por]_v1_[a-f0-9]{64}\b"),
    ),
    VendorRule("databricks_token", ("dapi",), _r(r"\bdapi[a-f0-9]{32}(?:-\d)?\b")),
    VendorRule(
        "age_secret_key",
        ("age-secret-key-",),
        _r(r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b"),
    ),
    VendorRule("linear_key", ("lin_api_",), _r(r"\blin_api_[A-Za-z0-9]{40}\b")),
    VendorRule(
        "shopify_token",
        ("shpat_", "shpca_", "shppa_", "shpss_"),
        _r(r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b"),
    ),
    VendorRule("groq_key", ("gsk_",), _r(r"\bgsk_[A-Za-z0-9]{48,}\b")),
    VendorRule("xai_key", ("xai-",), _r(r"\bxai-[A-Za-z0-9]{70,}\b")),
    VendorRule("replicate_token", ("r8_",), _r(r"\br8_[A-Za-z0-9]{37}\b")),
    VendorRule(
        "vault_token", ("hvs.", "hvb.", "hvr."), _r(rf"\bhv[sbr]\.[A-Za-z0-9_\-]{{24,}}{_END}")
    ),
    VendorRule("google_oauth_secret", ("gocspx-",), _r(rf"\bGOCSPX-[A-Za-z0-9_\-]{{28}}{_END}")),
    VendorRule("google_oauth_token", ("ya29.",), _r(rf"\bya29\.[A-Za-z0-9_\-]{{30,}}{_END}")),
    VendorRule("postman_key", ("pmak-",), _r(r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b")),
    VendorRule("atlassian_token", ("atatt3",), _r(rf"\bATATT3[A-Za-z0-9_\-=]{{40,}}{_END}")),
    VendorRule(
        "doppler_token",
        ("dp.pt.", "dp.st.", "dp.sa."),
        _r(r"\bdp\.(?:pt|st|sa)\.[A-Za-z0-9]{40,}\b"),
    ),
    VendorRule(
        "grafana_token",
        ("glsa_", "glc_"),
        _r(
            rf"\b(?:glsa_[A-Za-z0-9]{{32}}_[A-Fa-f0-9]{{8}}|glc_[A-Za-z0-9+/]{{32,}}={{0,2}}){_END}"
        ),
    ),
    VendorRule(
        "telegram_bot_token",
        (":aa",),
        _r(r"(?<![\d:])\d{8,10}:AA[A-Za-z0-9_\-]{33}(?![\w\-])"),
    ),
    VendorRule(
        "jwt",
        ("eyj",),
        _r(rf"\beyJ[A-Za-z0-9_\-]{{10,}}\.eyJ[A-Za-z0-9_\-]{{10,}}\.[A-Za-z0-9_\-]{{16,}}{_END}"),
    ),
    VendorRule(
        "discord_token",
        ("discord",),
        _r(
            r"(?i:discord).{0,40}?\b(?P<secret>[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}"
            r"\.[A-Za-z0-9_\-]{27,38})\b"
        ),
    ),
)


def scan_vendor(text: str, lowered: str) -> list[Finding]:
    """All vendor findings in ``text`` (``lowered`` is ``text.lower()``, shared by the layers)."""
    found: list[Finding] = []
    for rule in RULES:
        if not any(k in lowered for k in rule.keywords):
            continue
        for m in rule.pattern.finditer(text):
            group = "secret" if "secret" in rule.pattern.groupindex else 0
            value = m.group(group)
            if "EXAMPLE" in value.upper() or looks_like_placeholder(value, references=False):
                continue
            found.append(
                Finding(
                    m.start(group), m.end(group), rule.type, "SECRET", "sure", f"vendor:{rule.type}"
                )
            )
    return found
