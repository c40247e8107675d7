"""The detect-secrets layer: the library's plugins and filters, run line by line.

detect-secrets 1.5.0 scans in-memory text only through a private function, and its public
``scan_line`` runs the entropy plugins in "eager" mode (every word is a candidate). This layer
therefore drives the plugins' public ``analyze_line`` itself and applies the library's own
default filters (UUIDs, templated secrets, ``$VAR`` references, sequential strings, …), exactly
as its file scanner does.

Lines go to the library only when a cheap prefilter (:func:`worth_scanning`) says they could
hold a secret; the library costs ~10 CPU-seconds per MB otherwise.

Library findings that a vendor/context rule already covers are dropped (the rule's placeholder
type is more precise). The rest become:

* vendor plugins (AWS, GitHub, Slack, Stripe, JWT, private key, …): *sure*;
* ``Secret Keyword`` and ``Base64 High Entropy String``: *uncertain* (quarantine);
* hex entropy and public IPs: ignored (git SHAs and digests; IPs are the PII layer's job);
* ``Private Key``: ignored, it fires on a BEGIN line alone; the vendor rule, which needs key
  material after the header, decides.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from corpus.scrub.assignments import literal_secret as _literal_secret
from corpus.scrub.entropy import is_high_entropy_secret
from corpus.scrub.findings import Finding, looks_like_placeholder

_SURE_TYPES = {
    "AWS Access Key": "aws_access_key_id",
    "Azure Storage Account access key": "azure_storage_key",
    "Basic Auth Credentials": "url_password",
    "GitHub Token": "github_token",
    "GitLab Token": "gitlab_token",
    "JSON Web Token": "jwt",
    "Slack Token": "slack_token",
    "Stripe Access Key": "stripe_key",
    "OpenAI Token": "openai_key",
    "NPM tokens": "npm_token",
    "PyPI upload token": "pypi_token",
    "SendGrid API Key": "sendgrid_key",
    "Twilio API Key": "twilio_key",
    "Discord Bot Token": "discord_token",
    "Mailchimp Access Key": "mailchimp_key",
    "Telegram Bot Token": "telegram_token",
    "Artifactory Credentials": "artifactory_token",
    "Cloudant Credentials": "cloudant_password",
    "IBM Cloud IAM Key": "ibm_cloud_key",
    "IBM COS HMAC Credentials": "ibm_cos_hmac",
    "SoftLayer Credentials": "softlayer_key",
    "Square OAuth Secret": "square_oauth_secret",
}
_UNCERTAIN_TYPES = {
    "Secret Keyword": "secret_keyword",
    "Base64 High Entropy String": "high_entropy",
}

_KEYWORDS = re.compile(r"(?i)pass|pwd|secret|token|api.?key|auth|credential|private|://\S*@")
_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{20,}")


def worth_scanning(line: str) -> bool:
    """Prefilter: a secret keyword, a URL with credentials, or a 20+ character token that
    mixes letters and digits. Other lines cannot hold anything the library reports."""
    if _KEYWORDS.search(line):
        return True
    for m in _TOKEN.finditer(line):
        tok = m.group()
        if any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok):
            return True
    return False


class DetectSecretsLayer:
    """Runs detect-secrets' default plugins and filters over lines of text."""

    def __init__(self) -> None:
        from detect_secrets.settings import default_settings, get_filters, get_plugins

        with default_settings() as settings:
            settings.disable_filters("detect_secrets.filters.common.is_invalid_file")
            self._plugins: list[Any] = list(get_plugins())
            self._filters: list[Callable[..., bool]] = list(get_filters())
        from detect_secrets.util.code_snippet import get_code_snippet
        from detect_secrets.util.inject import call_function_with_arguments

        self._snippet = get_code_snippet
        self._call = call_function_with_arguments

    def _filtered(self, **kwargs: Any) -> bool:
        for f in self._filters:
            try:
                if self._call(f, **kwargs):
                    return True
            except TypeError:  # the filter needs arguments this call does not have
                continue
        return False

    def scan_line(self, line: str) -> list[tuple[str, str]]:
        """``(detect-secrets type, secret value)`` pairs that survive the library's filters."""
        context = self._snippet(lines=[line], line_number=1)
        if self._filtered(filename="corpus", line=line, context=context):
            return []
        out: list[tuple[str, str]] = []
        for plugin in self._plugins:
            for secret in (
                plugin.analyze_line(filename="corpus", line=line, line_number=1, context=context)
                or ()
            ):
                value = secret.secret_value
                if not value or self._filtered(
                    filename="corpus", secret=value, plugin=plugin, line=line, context=context
                ):
                    continue
                out.append((secret.type, value))
        return sorted(set(out))

    def scan(self, text: str, covered: list[Finding]) -> list[Finding]:
        """Findings in ``text`` not already covered by ``covered`` (earlier layers)."""
        found: list[Finding] = []
        offset = 0
        for line in text.split("\n"):
            if worth_scanning(line):
                found.extend(self._line_findings(line, offset, covered))
            offset += len(line) + 1
        return found

    def _line_findings(self, line: str, offset: int, covered: list[Finding]) -> list[Finding]:
        found: list[Finding] = []
        for ds_type, value in self.scan_line(line):
            if ds_type in _SURE_TYPES:
                confidence, kind = "sure", _SURE_TYPES[ds_type]
            elif ds_type in _UNCERTAIN_TYPES:
                confidence, kind = "uncertain", _UNCERTAIN_TYPES[ds_type]
            else:
                continue
            pos = line.find(value)
            if pos < 0 or len(value) < 6 or looks_like_placeholder(value):
                continue
            start, end = offset + pos, offset + pos + len(value)
            if any(c.start < end and start < c.end for c in covered):
                continue
            if kind == "secret_keyword" and not _literal_secret(value):
                continue  # a variable name, path or file name assigned to a secret-named key
            if kind == "high_entropy" and not is_high_entropy_secret(
                value, line[max(0, pos - 20) : pos]
            ):
                continue
            slug = re.sub(r"[^a-z0-9]+", "_", ds_type.lower()).strip("_")
            found.append(Finding(start, end, kind, "SECRET", confidence, f"detect-secrets:{slug}"))
        return found
