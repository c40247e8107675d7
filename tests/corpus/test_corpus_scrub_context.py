"""Issue-19 detectors: credentials by context, new vendor formats, phones and cards.

Every detector is checked where its values occur -- plain text, a Claude Code Bash call
(JSON-escaped) and an indented YAML block -- and look-alikes that must come back unaltered.
"""

from __future__ import annotations

import json

import pytest

from base.errors import ConfigError
from corpus.scrub import Scrubber
from corpus.scrub.context import shape_score
from corpus.scrub.numbers import issuer_range, luhn_valid
from corpus.scrub.vendor import RULES_FILE, load_rules

P = "Qz7!vR2m#Kp9Lw"  # a password-shaped value (synthetic)
TOK = "Xb3Kq9Lm2Np7Rt5Vw8Yz4Cd6Fg1Hj0"  # a token-shaped value (synthetic)

# (detector, snippet, value that must not survive)
POSITIVES = [
    ("mysql -p'…'", f"mysql -u app -p'{P}' -h db shop", P),
    ("mysql -pVALUE", "mysql -uroot -pTq2p95zKnslCrD orders < dump.sql", "Tq2p95zKnslCrD"),
    ("--password=", f"mysqldump --user=backup --password={P} shop", P),
    ("sshpass -p", f"sshpass -p '{P}' ssh deploy@build01 uptime", P),
    ("PGPASSWORD=", f"PGPASSWORD='{P}' psql -h db -U app", P),
    ("netrc", f"machine git.corp.io\n  login deploy\n  password {P}", P),
    ("netrc one line", f"machine api.heroku.com login ops password {P}", P),
    ("pgpass", f"$ cat ~/.pgpass\ndb.internal:5432:orders:app:{P}", P),
    ("ini", f"[client]\nuser = app\npassword = {P}", P),
    ("yaml", f"database:\n  password: {P}", P),
    ("toml", f'[auth]\nclient_secret = "{TOK}"', TOK),
    ("json", f'{{"api_secret": "{TOK}"}}', TOK),
    ("env dump", f"HOME=/root\nDEPLOY_TOKEN={TOK}\nTERM=xterm", TOK),
    ("Authorization Bearer", f"curl -H 'Authorization: Bearer {TOK}' https://x.corp.io", TOK),
    ("Authorization custom scheme", f"authorization: ApiKey {TOK}", TOK),
    ("curl -u user:password", f"curl -u deploy:{P} https://registry.corp.io/v2/", P),
    ("URL userinfo", f"postgres://app:{TOK}@db.internal:5432/orders", TOK),
    ("URL ?token=", f"https://hooks.corp.io/deploy?token={TOK}&env=prod", TOK),
    ("URL &sig=", f"https://a.blob.core.windows.net/c/r.csv?sv=2022&sig={TOK}", TOK),
    ("URL &key=", f"https://maps.corp.io/geocode?address=depot&key={TOK}", TOK),
    ("URL ?secret=", f"POST https://ci.corp.io/hook?secret={TOK} -> 204", TOK),
    ("URL access_token=", f"https://graph.corp.io/me?fields=id&access_token={TOK}", TOK),
    ("prose password is", f"The staging DB password is {P} until we rotate it.", P),
    ("prose passphrase", f"the key's passphrase is '{P}', do not commit it", P),
    ("prose token:", f"Got it from ops, token: {TOK} (expires Friday)", TOK),
    (
        "k8s bootstrap token",
        "kubeadm join 10.0.0.10:6443 --token 7f3k2q.9x1m4n8p2r6t0v5w",
        "7f3k2q.9x1m4n8p2r6t0v5w",
    ),
    (
        "Mailgun key-",
        "curl --user 'api:key-3ax6xnjp29jd6fds4gc373sgvjxteol0' https://api.mailgun.net/v3",
        "key-3ax6xnjp29jd6fds4gc373sgvjxteol0",
    ),
    (
        "Twilio auth token",
        "curl https://api.twilio.com -u AC0123456789abcdef0123456789abcdef:"
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    ),
    (
        "AWS session token",
        "export AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjE" + "Ab3+Cd4/Ef5Gh6Ij7Kl8" * 8,
        "IQoJb3JpZ2luX2VjE" + "Ab3+Cd4/Ef5Gh6Ij7Kl8" * 8,
    ),
    (
        "gitleaks-imported rule (RubyGems)",
        "gem push --key rubygems_" + "0123456789abcdef" * 3,
        "rubygems_" + "0123456789abcdef" * 3,
    ),
    ("phone +CC", "Call the on-call engineer at +44 20 7946 0958 if it fails.", "7946 0958"),
    ("phone US parens", "customer: (212) 736-5001, callback today", "736-5001"),
    ("phone E.164", "sms sent to +14158675309", "4158675309"),
    ("card contiguous", "payment.charge card=4539578763621486 amount=42.00", "4539578763621486"),
    ("card spaced", "read out on the call: 5425 2334 3010 9903, exp 09/28", "5425 2334 3010 9903"),
    ("card Amex", "pan 3714-496353-98431 declined", "3714-496353-98431"),
]

LOOKALIKES = [
    "curl http://127.0.0.1:8080/health && curl http://10.0.3.17:9000/metrics",
    "inet 192.168.1.42/24 brd 192.168.1.255 scope global eth0",
    '"integrity": "sha512-'
    + "Q2hlY2tzdW0gb2YgdGhlIHBhY2thZ2UgdGFyYmFsbCwgYmFzZTY0IGVuY29kZWQ" * 1
    + '=="',
    'mysql -u app -p"${DB_PASSWORD}" -h db orders',
    'curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user',
    "database:\n  password: ${DB_PASSWORD}\n  token: {{ .Values.token }}",
    "ghcr.io/corp/gastown@sha256:" + "3f" * 32,
    "commit " + "a1b2c3d4e5" * 4 + "\n\n    fix convoy loader",
    "3e1f9ab fix mail router\n77c2d10 add witness patrol",
    "session 9b2f6c1e-4d3a-4f7e-a1b2-c3d4e5f6a7b8 resumed",
    "Successfully installed torch-2.13.0 transformers-5.23.0 node0-0.4.1rc2",
    "git tag v2.14.0-rc.1 && npm version 10.9.2; OS build 10.0.19045.3803",
    "mysql -u <user> -p'<password>' -h <host>",
    "api_key: your_api_key_here\npassword: changeme\ntoken: <TOKEN>",
    "Authorization: Bearer ***REDACTED***\npassword: ********",
    "kubeadm join <host>:6443 --token <token> --discovery-token-ca-cert-hash sha256:<hash>",
    "docker run -d -p 8080:80 -p 5432:5432 --name web nginx:1.27",
    "ssh -p 2222 deploy@build01 && mkdir -p /srv/logs && git log -p -3",
    "mysql -u root -p orders\nEnter password:",
    'echo "$CR_PAT" | docker login ghcr.io -u bot --password-stdin',
    "The password is stored in Vault and rotated weekly; ask the mayor.",
    "The token is required for the push step. Password must be 12+ characters.",
    "Use a key-value store; key-rotation runs nightly (key-0 is the oldest).",
    "https://ci.corp.io/builds?page=2&sort=key&order=desc&branch=main",
    'curl "https://hooks.corp.io/deploy?token=${DEPLOY_TOKEN}&env=prod"',
    "order 4539578763621487 shipped; ORD-2026-004211 refunded, invoice INV-20261207",
    "ts=1765065243123 start_ns=1765065243123456789 dur_ms=1834",
    "2026-12-06T22:14:03.512Z INFO started; wrote 1048576000 bytes (pid 48213)",
    "d41d8cd98f00b204e9800998ecf8427e  build/artifact.bin",
    "import config.loader and call module.reload",
]


def _json_escaped(snippet: str) -> str:
    """As a Claude Code log holds a Bash call: the command inside a JSON string."""
    return json.dumps(
        {"type": "tool_use", "name": "Bash", "input": {"command": snippet, "description": "run"}}
    )


def _yaml_indented(snippet: str) -> str:
    body = "\n".join("      " + line for line in snippet.splitlines())
    return f"job:\n  notes: |\n{body}\n  retries: 3"


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    """As the corpus build configures it by default (private addresses kept)."""
    return Scrubber(keep_private_ips=True)


FORMS = {"plain": lambda s: s, "json": _json_escaped, "yaml": _yaml_indented}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize(("name", "snippet", "value"), POSITIVES, ids=[p[0] for p in POSITIVES])
def test_secret_is_caught_in_every_form(scrubber, name, snippet, value, form) -> None:
    text = FORMS[form](snippet)
    assert value in text
    res = scrubber.scrub(text)
    assert res.uncertain or value not in res.text, f"{name} ({form}) survived: {res.text}"


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("snippet", LOOKALIKES, ids=[s[:40] for s in LOOKALIKES])
def test_lookalike_survives_in_every_form(scrubber, snippet, form) -> None:
    text = FORMS[form](snippet)
    res = scrubber.scrub(text)
    assert res.text == text and not res.uncertain, (res.replaced, res.reasons)


def test_weak_value_in_strong_context_is_uncertain_not_replaced(scrubber) -> None:
    """A plain word after `password` in a .netrc is doubtful: quarantined, nothing guessed."""
    text = "machine git.corp.io login deploy password hunter"
    res = scrubber.scrub(text)
    assert res.text == text
    assert [f.detector for f in res.uncertain] == ["context:netrc"]
    assert "hunter" not in " ".join(res.reasons)


def test_thresholds_move_findings_between_sure_and_uncertain() -> None:
    text = f"The staging DB password is {P} until Friday."
    assert Scrubber(use_library=False).scrub(text).replaced
    strict = Scrubber(use_library=False, sure_score=7.0, uncertain_score=3.0).scrub(text)
    assert not strict.replaced and strict.uncertain
    with pytest.raises(ValueError, match="uncertain_score"):
        Scrubber(sure_score=3.0, uncertain_score=4.0)


def test_shape_score_orders_values() -> None:
    assert shape_score("rotated") == 0 == shape_score("${DB_PASSWORD}") == shape_score("<pw>")
    assert shape_score("hunter22") < shape_score(P) == 4


def test_card_checks() -> None:
    assert luhn_valid("4539578763621486") and not luhn_valid("4539578763621487")
    assert issuer_range("4539578763621486") and issuer_range("371449635398431")
    assert not issuer_range("1765065243123456")  # a timestamp: no issuer starts with 1
    assert not issuer_range("45395787636214")  # Visa prefix, wrong length


def test_rule_corpus_loads_with_node0_and_gitleaks_sections() -> None:
    rules = load_rules()
    sources = {r.source.split("@")[0] for r in rules}
    assert sources == {"node0", "gitleaks"}
    assert sum(r.source != "node0" for r in rules) >= 100
    assert all(r.keywords for r in rules)
    for rid in ("k8s_bootstrap_token", "mailgun_key", "twilio_auth_token", "aws_session_token"):
        assert any(r.type == rid and r.source == "node0" for r in rules), rid
    assert RULES_FILE.name == "vendor.toml"


def test_bad_rule_file_is_a_config_error(tmp_path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text("[[rules]]\nid = \"x\"\nkeywords = [\"x\"]\nregex = '''(unclosed'''\n")
    with pytest.raises(ConfigError, match="vendor rule #1"):
        load_rules(bad)
    bad.write_text('[[rules]]\nid = "x"\nregex = "x"\n')
    with pytest.raises(ConfigError, match="keywords"):
        load_rules(bad)
