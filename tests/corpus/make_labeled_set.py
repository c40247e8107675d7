# ruff: noqa: E501  (a data file: one snippet template per line reads better unwrapped)
"""Generate tests/corpus/data/labeled_secrets.jsonl: the labeled scrubber evaluation set.

Run: .venv/bin/python tests/corpus/make_labeled_set.py  (deterministic, seed 20260301).

Positives are FAKE secrets and personal data of every type the corpus scrubber must catch,
embedded in varied contexts (env files, YAML, JSON, code, shell, prose, logs, headers).
Negatives are look-alikes that must pass untouched: UUIDs, git SHAs, digests, base64 of normal
text, documentation placeholders, version strings, IP-like numbers, identifiers, public keys,
object ids, loopback and documentation addresses. The set was written from the formats'
public descriptions, not from the scrubber's regexes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from pathlib import Path

R = random.Random(20260301)
AN = string.ascii_letters + string.digits
UP = string.ascii_uppercase + string.digits
B64 = AN + "+/"


def rnd(chars: str, n: int) -> str:
    return "".join(R.choice(chars) for _ in range(n))


def pem(kind: str) -> str:
    body = "\n".join(rnd(B64, 64) for _ in range(R.randint(3, 8))) + "\n" + rnd(B64, 20) + "=="
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


SECRET_VALUES = {
    "aws_access_key_id": lambda: (
        R.choice(["AKIA", "ASIA"]) + rnd("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    ),
    "aws_secret_access_key": lambda: rnd(B64, 40),
    "gcp_api_key": lambda: "AIza" + rnd(AN + "_-", 35),
    "azure_storage_key": lambda: rnd(B64, 86) + "==",
    "github_token": lambda: R.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rnd(AN, 36),
    "github_pat": lambda: "github_pat_11" + rnd(UP, 20) + "_" + rnd(AN, 59),
    "gitlab_token": lambda: "glpat-" + rnd(AN + "_-", 20),
    "slack_token": lambda: (
        R.choice(["xoxb-", "xoxp-"])
        + f"{R.randint(10**10, 10**11)}-{R.randint(10**10, 10**11)}-"
        + rnd(AN, 24)
    ),
    "slack_webhook": lambda: (
        f"https://hooks.slack.com/services/T{rnd(UP, 8)}/B{rnd(UP, 10)}/{rnd(AN, 24)}"
    ),
    "stripe_key": lambda: (
        R.choice(["sk_live_", "rk_live_", "sk_test_"]) + rnd(AN, R.choice([24, 34, 99]))
    ),
    "openai_key": lambda: R.choice(
        [
            "sk-proj-" + rnd(AN + "-_", 74) + "T3BlbkFJ" + rnd(AN + "-_", 74),
            "sk-" + rnd(AN, 20) + "T3BlbkFJ" + rnd(AN, 20),
            "sk-svcacct-" + rnd(AN + "-_", 60),
        ]
    ),
    "anthropic_key": lambda: "sk-ant-api03-" + rnd(AN + "-_", 93) + "AA",
    "huggingface_token": lambda: "hf_" + rnd(string.ascii_letters, 34),
    "npm_token": lambda: "npm_" + rnd(AN, 36),
    "sendgrid_key": lambda: "SG." + rnd(AN + "_-", 22) + "." + rnd(AN + "_-", 43),
    "jwt": lambda: (
        base64.urlsafe_b64encode(
            json.dumps({"alg": R.choice(["HS256", "RS256"]), "typ": "JWT"}).encode()
        )
        .decode()
        .rstrip("=")
        + "."
        + base64.urlsafe_b64encode(
            json.dumps(
                {"sub": rnd(AN, 8), "iat": R.randint(1.6e9, 1.8e9), "role": "polecat"}
            ).encode()
        )
        .decode()
        .rstrip("=")
        + "."
        + rnd(AN + "-_", 43)
    ),
}

CONTEXTS = [
    "export {NAME}={v}",
    '{NAME}="{v}"',
    "  {name}: {v}",
    '  {name}: "{v}"',
    '{{"{name}": "{v}", "region": "us-east-1"}}',
    'client = Client({name}="{v}")',
    "I rotated it this morning, the new one is {v} so update your env.",
    "2026-03-01T10:00:00Z DEBUG loaded credential {v} for upload",
    "$ gt config set {name} {v}\nUpdated.",
    "Error: request failed (key={v}, status=401)",
]
NAMES = {
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "gcp_api_key": "google_api_key",
    "azure_storage_key": "azure_key",
    "github_token": "github_token",
    "github_pat": "gh_token",
    "gitlab_token": "gitlab_token",
    "slack_token": "slack_bot_token",
    "slack_webhook": "webhook_url",
    "stripe_key": "stripe_secret",
    "openai_key": "openai_api_key",
    "anthropic_key": "anthropic_api_key",
    "huggingface_token": "hf_token",
    "npm_token": "npm_token",
    "sendgrid_key": "sendgrid_api_key",
    "jwt": "session_jwt",
}


def positives() -> list[dict]:
    out = []
    for kind, gen in SECRET_VALUES.items():
        for ctx in R.sample(CONTEXTS, 6):
            v = gen()
            name = NAMES[kind]
            if kind == "azure_storage_key":
                v = f"DefaultEndpointsProtocol=https;AccountName=gtstore;AccountKey={v};EndpointSuffix=core.windows.net"
            if kind == "aws_secret_access_key" and "{name}" not in ctx and "{NAME}" not in ctx:
                ctx = "aws_secret_access_key = {v}"  # a bare 40-char AWS secret has no shape of its own
            out.append(
                {"text": ctx.format(NAME=name.upper(), name=name, v=v), "label": 1, "kind": kind}
            )
    for kind in (
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "DSA PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ):
        key = pem(kind)
        out.append(
            {"text": f"$ cat deploy/id_key\n{key}\n$ ", "label": 1, "kind": "pem_private_key"}
        )
        out.append(
            {
                "text": json.dumps({"type": "service_account", "private_key": key + "\n"}),
                "label": 1,
                "kind": "pem_private_key",
            }
        )
    for tmpl in [
        "postgres://app:{p}@db.internal:5432/gastown",
        "mysql://root:{p}@10.1.2.3/prod",
        "redis://:{p}@cache.gastown-dev.io:6379/0",
        "amqp://mq:{p}@rabbit:5672/",
        "git clone https://ci-bot:{p}@git.gastown-dev.io/gastown/mq.git",
        "DATABASE_URL=postgresql://gastown:{p}@pg.prod.svc:5432/beads",
        "mongodb+srv://admin:{p}@cluster0.ab1cd.mongodb.net/test",
        "https://deploy:{p}@registry.gastown-dev.io/v2/",
    ]:
        p = R.choice([rnd(AN, 12), rnd(AN + "!#%^", 16), "Tr0ub4dor&3", "hunter2hunter2"])
        out.append({"text": tmpl.format(p=p), "label": 1, "kind": "url_password"})
    for tmpl in [
        'password: "{p}"',
        "DB_PASSWORD={p}",
        "db_password = '{p}'",
        '"password": "{p}"',
        "mysql -u root --password={p} gastown",
        "smtp_pass: {p}",
        "client_secret={p}",
        '  secret: "{p}"',
        "ADMIN_PWD={p}",
        "Authorization: Bearer {t}",
        "curl -H 'Authorization: token {t}' https://api.gastown-dev.io/v1/beads",
        '{{"headers": {{"Authorization": "Bearer {t}"}}}}',
    ]:
        out.append(
            {
                "text": tmpl.format(
                    p=R.choice(
                        [rnd(AN, 14), "correct-horse-battery-9", "S3cr3t!2026", rnd(AN + "@#$", 20)]
                    ),
                    t=rnd(AN + "-_.", 40),
                ),
                "label": 1,
                "kind": "password_or_token",
            }
        )
    for _ in range(6):
        out.append(
            {
                "text": f"the signing key for the refinery is {rnd(AN, R.randint(32, 48))}, keep it out of beads",
                "label": 1,
                "kind": "high_entropy",
            }
        )
    emails = [
        "dana.kovacs@gastown-dev.io",
        "steve+beads@yegge.net",
        "m.rossi@polecat.works",
        "ops-oncall@gastown.town",
        "j_smith42@mail.gastown-dev.io",
        "li.wei@corp.example.co.uk".replace("example.", "sample-"),
    ]
    for e, ctx in zip(
        emails,
        [
            "Reported by {e}.",
            "Co-authored-by: Dana <{e}>",
            "contact: {e}",
            "gt mail send --cc {e} mayor/",
            '{{"author": "{e}"}}',
            "ping {e} if this breaks",
        ],
        strict=True,
    ):
        out.append({"text": ctx.format(e=e), "label": 1, "kind": "email"})
    for ip, ctx in [
        ("10.20.4.17", "node at {ip} is down"),
        ("192.168.7.41", "ssh polecat@{ip}"),
        ("172.16.9.200", "ALLOWED_HOSTS={ip}"),
        ("34.117.59.81", "curl http://{ip}:8080/health"),
        ("8.8.4.4", "resolver {ip}"),
        ("100.64.3.9", "tailscale ip: {ip}"),
        ("2a01:4f8:c17:1a2b::1", "listen [{ip}]:443"),
        ("fe80::1ff:fe23:4567:890a", "inet6 {ip} prefixlen 64"),
        ("2606:4700:4700::1111", "upstream {ip}"),
        ("fd12:3456:789a:1::7", "peer {ip} joined the DHT"),
    ]:
        out.append({"text": ctx.format(ip=ip), "label": 1, "kind": "ipv6" if ":" in ip else "ipv4"})
    for path in [
        "/home/dana/gt/gastown/polecats/nux",
        "/Users/steve/src/gastown",
        "C:\\Users\\mrossi\\gt\\beads",
        "/home/li.wei/.config/gastown/env",
        "/Users/j.smith/Library/Logs/gt.log",
        "/home/rictus-dev/gt/gastown/internal/convoy/load.go:57",
    ]:
        out.append({"text": f"see {path} for details", "label": 1, "kind": "home_dir"})
    return out


def negatives() -> list[dict]:
    out = []
    add = lambda text, kind: out.append({"text": text, "label": 0, "kind": kind})  # noqa: E731
    for _ in range(10):
        add(
            R.choice(
                ["request id {u}", "session_id: {u}", '{{"uuid": "{u}"}}', "trace={u}"]
            ).format(u=uuid.UUID(int=R.getrandbits(128), version=4)),
            "uuid",
        )
    add(f"id: {str(uuid.UUID(int=R.getrandbits(128), version=4)).upper()}", "uuid")
    for _ in range(10):
        sha = hashlib.sha1(rnd(AN, 20).encode()).hexdigest()
        add(
            R.choice(
                [
                    "commit {s}",
                    "Merge {s7}..{s}",
                    "fixed in {s}",
                    "git checkout {s}",
                    "HEAD is now at {s7} wip",
                ]
            ).format(s=sha, s7=sha[:7]),
            "git_sha",
        )
    for _ in range(8):
        d = hashlib.sha256(rnd(AN, 20).encode()).hexdigest()
        add(
            R.choice(
                [
                    "sha256:{d}",
                    "checksum {d}  model.gguf",
                    "oid sha256:{d}",
                    "docker pull python@sha256:{d}",
                    '"sha256": "{d}"',
                ]
            ).format(d=d),
            "digest",
        )
    for sentence in [
        "Run bd ready and pick the highest priority bead.",
        "The witness nudges idle polecats every ten minutes.",
        "hello world, this is a perfectly normal message",
        "gt sling gt-4f2k nux && gt mail send mayor/ -s done",
        "Refinery merged 3 branches without conflicts today.",
        '{"role": "polecat", "rig": "gastown"}',
        "username=admin&theme=dark&lang=en",
        "The quick brown fox jumps over the lazy dog again",
    ]:
        add(f"payload: {base64.b64encode(sentence.encode()).decode()}", "base64_text")
    for text in [
        "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "token: <YOUR_TOKEN>",
        "api_key: ${OPENAI_API_KEY}",
        "export ANTHROPIC_API_KEY=$(pass show anthropic)",
        'password = os.environ["DB_PASSWORD"]',
        "postgres://user:password@localhost:5432/dev",
        "Authorization: Bearer <token>",
        "Authorization: Bearer ${TOKEN}",
        "The key file must start with -----BEGIN RSA PRIVATE KEY----- and end with the END line.",
        "hf_token = None",
        "password: changeme",
        'api_key: "your-api-key-here"',
        'secret: "********"',
        "OpenAI keys look like sk-... and GitHub tokens start with ghp_",
        "password: {{ vault_db_password }}",
        "SLACK_WEBHOOK_URL=https://hooks.slack.com/services/XXX/YYY/ZZZ",
        "token = get_token(config)",
        "client_secret: !vault |",
        'export GITHUB_TOKEN="$GH_TOKEN"',
    ]:
        add(text, "placeholder")
    for text in [
        "upgraded to 1.2.3.4",
        "version 10.0.0.1 of the firmware",
        "release v2.1.0.3",
        "torch==2.13.0",
        "build 4.0.30319.42000",
        "SNMP OID 1.3.6.1.4.1.2021.10",
        "Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36",
        "pip install numpy==1.26.4.1",
        "go1.22.3 linux/amd64",
        "python 3.11.9",
        "schema 2.0.0.0 migration",
        "see section 3.2.1.4 of the spec",
        "libfoo.so.1.2.3.4",
    ]:
        add(text, "version")
    for text in [
        "bind 127.0.0.1:7000",
        "listen 0.0.0.0:8080",
        "netmask 255.255.255.0",
        "example host 192.0.2.10",
        "doc range 203.0.113.5 and 198.51.100.77",
        "connect to ::1 port 22",
        "http://localhost:3000",
        "inet6 2001:db8::1/64 (documentation prefix)",
        "broadcast 255.255.255.255",
        "multicast 224.0.0.251 mDNS",
    ]:
        add(text, "ip_lookalike")
    for text in [
        "getUserAccountSettingsForTenantAndRegion()",
        "AbstractSingletonProxyFactoryBean",
        "test_polecat_list_json_flag_prints_name",
        "TestMergeQueueRejectsStaleBranch2",
        "internal/refinery/merge_queue_test.go",
        "max_tokens=4096",
        "token_type: bearer",
        "password_min_length: 12",
        "valueFrom: secretKeyRef",
        "num_tokens = 512",
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
        "secretName: db-credentials",
        "PASSWORD_RESET_TIMEOUT_SECONDS=3600",
        "api_key_header_name: X-Api-Key",
        "use_auth_token: true",
        "self.private_key_path = Path('keys/deploy.pem')",
        "password_file: /run/secrets/db_password",
        "--token-file ~/.config/gt/token",
        "secret_santa_assignments.csv",
        "DB_PASSWORD=$DB_PASSWORD",
    ]:
        add(text, "identifier")
    for text in [
        "git@github.com:steveyegge/gastown.git",
        "npm i @types/node@18.19.3",
        "lodash@4.17.21",
        "golang.org/x/net v0.23.0 h1:7EYJ93RZ9vYSZAIb2x3lnuvqO5zneoD6IvWjuhfxjTs=",
        "integrity sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs817XGNOAbGm02WvBpoxwJHSAQ==",
        "MAC 00:1a:2b:3c:4d:5e",
        "at 12:30:45 the polecat stalled",
        "std::vector<std::string> names;",
        "arn:aws:iam::123456789012:role/deploy",
        "s3://gastown-artifacts/builds/2026-03-01/gt-linux-amd64.tar.gz",
        "pk_test_51Hx" + rnd(AN, 40) + " (publishable key, safe in the browser)",
        "channel C04ABCDEF12 and user U02XYZ98765",
        "color: #ff8800;",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://docs.google.com/document/d/1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms/edit",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + rnd(B64, 43) + " steve@laptop",
        "/nix/store/" + rnd("0123456789abcdfghijklmnpqrsvwxyz", 32) + "-python3-3.11.9",
        "tool_use id toolu_01" + rnd(AN, 22),
        "message msg_01" + rnd(AN, 22),
        "charge ch_3" + rnd(AN, 23),
        "pod gastown-api-7d9f8b6c5d-x2k4p restarted",
        "v0.0.0-20240101123456-abcdef123456",
        "<SECRET:github_token>",
        "password: <SECRET:password>",
        "mailto:<PII:email>",
        "/home/user/project/README.md",
        "/home/runner/work/gastown/gastown",
        "~/gt/gastown/polecats/nux",
        "email me at someone@example.com",
        "Co-Authored-By: Claude <noreply@anthropic.com>",
        "dana@users.noreply.github.com",
        "-----BEGIN PUBLIC KEY-----\n"
        + rnd(B64, 64)
        + "\n"
        + rnd(B64, 40)
        + "==\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\n"
        + rnd(B64, 64)
        + "\n"
        + rnd(B64, 64)
        + "\n-----END CERTIFICATE-----",
        "eyJhbGciOiJIUzI1NiJ9 is just the base64 of a JWT header",
        "data:image/png;base64,iVBORw0KGgo" + rnd(B64, 60),
        "gt-4f2k gt-9zq1 bd-7k2p",
        "SGVsbG8=",
        "ghp_ is the prefix of classic tokens",
        "version: 3\nservices:\n  db:\n    image: postgres:16.2",
        "Python 3.11.9 (main, Apr  2 2024, 08:25:04)",
        "phone extension 555-0100",
        "hf_hub_download(repo_id, filename)",
        "AKIA is the prefix of access key ids",
        "x = a::b + c::d",
        "The deploy took 1:02:03.456 in total",
        "task-sk-20240301-abc",
        "sk-learn is not a package; use scikit-learn",
    ]:
        add(text, "misc")
    for _ in range(10):
        words = R.sample(
            [
                "polecat",
                "mayor",
                "witness",
                "deacon",
                "bead",
                "convoy",
                "refinery",
                "sling",
                "hook",
                "formula",
                "ready",
                "blocked",
                "merge",
                "queue",
                "patrol",
                "nudge",
                "rig",
                "town",
            ],
            8,
        )
        add(" ".join(words).capitalize() + ".", "prose")
    return out


def main() -> None:
    rows = positives() + negatives()
    path = Path(__file__).parent / "data" / "labeled_secrets.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    pos = sum(r["label"] for r in rows)
    print(f"wrote {len(rows)} snippets ({pos} secrets, {len(rows) - pos} look-alikes) to {path}")


if __name__ == "__main__":
    main()
