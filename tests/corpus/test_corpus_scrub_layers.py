from __future__ import annotations

from corpus.scrub import Scrubber
from corpus.scrub.findings import Finding, resolve


def test_sure_secret_becomes_typed_placeholder(scrubber) -> None:
    text = "export GITHUB_TOKEN=ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + " && gt done"
    res = scrubber.scrub(text)
    assert res.text == "export GITHUB_TOKEN=<SECRET:github_token> && gt done"
    assert not res.uncertain


def test_pii_placeholders(scrubber) -> None:
    res = scrubber.scrub("mail dana.kovacs@gastown-dev.io from 34.117.59.81 in /home/dana/gt")
    assert res.text == "mail <PII:email> from <PII:ipv4> in <PII:home_dir>/gt"


def test_private_addresses_are_kept_on_request(scrubber) -> None:
    """The corpus build keeps them (``scrub.keep_private_ips``, default true); the scrubber's
    own default scrubs them, as the RAG sanitizer expects."""
    text = "node at 10.20.4.17 and 192.168.7.41, loopback 127.0.0.1, peer fd12:3456:789a:1::7"
    assert Scrubber(keep_private_ips=True).scrub(text).text == text
    old = scrubber.scrub(text).text
    assert old == "node at <PII:ipv4> and <PII:ipv4>, loopback 127.0.0.1, peer <PII:ipv6>"


def test_uncertain_reason_never_contains_the_secret(scrubber) -> None:
    token = "Zr8qP2xLmN4vT7wKc9BdYf3HjQ6sGa1EuW5"
    res = scrubber.scrub(f"cache={token} ok")
    assert res.uncertain and res.text.endswith(" ok")
    assert token in res.text  # nothing guessed: the example goes to quarantine instead
    assert all(token not in reason and token[:8] not in reason for reason in res.reasons)


def test_overlapping_findings_merge_to_union_with_best_type() -> None:
    a = Finding(10, 30, "email", "PII", "sure", "pii:email")
    b = Finding(5, 20, "url_password", "SECRET", "sure", "context:url_password")
    c = Finding(40, 50, "high_entropy", "SECRET", "uncertain", "entropy")
    merged = resolve([a, b, c])
    assert [(f.start, f.end, f.type) for f in merged] == [
        (5, 30, "url_password"),
        (40, 50, "high_entropy"),
    ]


def test_detect_secrets_layer_adds_recall() -> None:
    """A Mailchimp key has no vendor rule of ours; only the library layer finds it."""
    text = "mailchimp: 0a1b2c3d4e5f60718293a4b5c6d7e8f9-us12"
    assert not Scrubber(use_library=False).scan(text)
    found = Scrubber(use_library=True).scan(text)
    assert [f.detector for f in found] == ["detect-secrets:mailchimp_access_key"]


def test_placeholders_are_not_rescanned_as_secrets(scrubber) -> None:
    text = "token: <SECRET:github_token>\nmail <PII:email>, password=<SECRET:password>"
    assert scrubber.scan(text) == []
