# ruff: noqa: E501  (data generator: long literal snippets are the point)
"""Generator for the held-out secret set (heldout_secrets.jsonl).

Written blind: before reading any code under corpus/scrub/ or tests/corpus/. Every secret value
is synthetic (random characters from a fixed seed, in the documented shape of the vendor's
format); none is a real credential. Rerunning this script reproduces the jsonl byte for byte.

Each line: text, label (secret|clean), kind (secret type, or the look-alike family for clean
snippets), note, and for secret snippets `secrets`: the substrings that must not survive
scrubbing.

Labeling policy (debatable cases):
  * IPv4/IPv6 addresses of hosts are sensitive, including RFC 1918 / ULA private addresses
    (they reveal internal topology). Clean: loopback (127.0.0.0/8, ::1), unspecified
    (0.0.0.0, ::), netmasks / broadcast (255.255.255.0, 255.255.255.255), the documentation
    ranges of RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and RFC 3849
    (2001:db8::/32), and dotted version numbers / OIDs in a version or OID context.
  * E-mail addresses are sensitive unless the domain is reserved for documentation
    (RFC 2606 / 6761: example.com/.org/.net, *.example, *.test, *.invalid, localhost).
    `git@github.com:org/repo.git` is an SSH remote, not an e-mail address: clean.
  * Home paths are sensitive when they name a user (/home/alice, /Users/bob, C:\\Users\\carol);
    generic forms (/home/, /home/*, /home/$USER, ~/, $HOME, /home/<you>) are clean.
  * Vendor-documented example credentials (AWS's AKIAIOSFODNN7EXAMPLE / wJalr...EXAMPLEKEY),
    placeholders (sk-..., YOUR_API_KEY, <token>, ghp_xxxx...), environment references
    (${VAR}, $(cmd), secrets.X) and already-scrubbed placeholders (<SECRET:...>) are clean.
  * Public material is clean: X.509 certificates, public keys, SSH public keys and key
    fingerprints; object/resource identifiers that are not credentials (Stripe cus_/pi_,
    Anthropic msg_/toolu_/req_, OpenAI chatcmpl-/asst_, AWS ARNs and resource ids, Slack
    channel ids, GraphQL node ids).
  * Stripe *test-mode* secret keys (sk_test_) are secrets (they authenticate to the API).
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

R = random.Random(20240604)
UP = string.ascii_uppercase
LO = string.ascii_lowercase
DIG = string.digits
B62 = UP + LO + DIG
B64 = B62 + "+/"
B64URL = B62 + "-_"
HEX = "0123456789abcdef"
B32 = UP + "234567"

OUT: list[dict] = []


def rs(alpha: str, n: int) -> str:
    return "".join(R.choice(alpha) for _ in range(n))


def mixed(alpha: str, n: int) -> str:
    """Random string that contains at least one upper, lower and digit when alpha allows."""
    while True:
        s = rs(alpha, n)
        need = [c for c in (UP, LO, DIG) if any(ch in alpha for ch in c)]
        if all(any(ch in c for ch in s) for c in need):
            return s


def add(text: str, label: str, kind: str, note: str, secrets: list[str] | None = None) -> None:
    rec = {"text": text, "label": label, "kind": kind, "note": note}
    if label == "secret":
        assert secrets, text
        for s in secrets:
            assert s in text, (s, text)
        rec["secrets"] = secrets
    OUT.append(rec)


def ts() -> str:
    return f"2024-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}T{R.randint(0, 23):02d}:{R.randint(0, 59):02d}:{R.randint(0, 59):02d}Z"


def bead_id() -> str:
    return "gt-" + rs(LO + DIG, 5)


def sha40() -> str:
    return rs(HEX, 40)


def b64u(obj) -> str:
    return (
        base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def transcript(role: str, content: str) -> str:
    return json.dumps(
        {"session": "s-" + rs(LO + DIG, 8), "role": role, "rig": "gastown", "content": content}
    )


def bead(title: str, desc: str) -> str:
    return json.dumps(
        {
            "id": bead_id(),
            "title": title,
            "description": desc,
            "status": "open",
            "priority": R.randint(0, 3),
            "issue_type": "task",
        }
    )


# ---------------------------------------------------------------- value generators
def aws_akid() -> str:
    return R.choice(["AKIA", "AKIA", "ASIA"]) + mixed(B32, 16)


def aws_secret() -> str:
    return mixed(B64, 40)


def gcp_key() -> str:
    return "AIza" + mixed(B64URL, 35)


def azure_key() -> str:
    return base64.b64encode(R.randbytes(64)).decode()


def gh_token() -> str:
    p = R.choice(["ghp_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"])
    if p == "github_pat_":
        return p + "11" + mixed(UP + DIG, 20) + "_" + mixed(B62, 59)
    return p + mixed(B62, 36)


def glpat() -> str:
    return "glpat-" + mixed(B64URL, 20)


def slack_token() -> str:
    k = R.choice(["xoxb", "xoxb", "xoxp", "xapp", "xoxe"])
    if k == "xoxb":
        return f"xoxb-{rs(DIG, 12)}-{rs(DIG, 13)}-{mixed(B62, 24)}"
    if k == "xoxp":
        return f"xoxp-{rs(DIG, 12)}-{rs(DIG, 12)}-{rs(DIG, 13)}-{rs(HEX, 32)}"
    if k == "xapp":
        return f"xapp-1-A{rs(UP + DIG, 10)}-{rs(DIG, 13)}-{rs(HEX, 64)}"
    return f"xoxe.xoxp-1-{mixed(B62, 140)}"


def slack_webhook() -> str:
    return (
        f"https://hooks.slack.com/services/T{rs(UP + DIG, 8)}/B{rs(UP + DIG, 10)}/{mixed(B62, 24)}"
    )


def stripe_key() -> str:
    p = R.choice(["sk_live_", "sk_live_", "rk_live_", "sk_test_", "whsec_"])
    if p == "whsec_":
        return p + mixed(B62, 32)
    return p + mixed(B62, R.choice([24, 99]))


def openai_key() -> str:
    k = R.choice(["legacy", "proj", "proj", "svcacct", "admin", "proj48"])
    if k == "legacy":
        return "sk-" + mixed(B62, 20) + "T3BlbkFJ" + mixed(B62, 20)
    if k == "proj48":
        return "sk-proj-" + mixed(B62, 48)
    return f"sk-{k}-" + mixed(B64URL, 74) + "T3BlbkFJ" + mixed(B64URL, 74)


def anthropic_key() -> str:
    k = R.choice(["api03", "api03", "api03", "admin01", "oat01"])
    return f"sk-ant-{k}-" + mixed(B64URL, 93) + "AA"


def jwt() -> str:
    alg = R.choice(["HS256", "RS256", "ES256"])
    hdr = {"alg": alg, "typ": "JWT"}
    if R.random() < 0.4:
        hdr["kid"] = rs(HEX, 16)
    pl = {"sub": rs(DIG, 9), "iat": 1700000000 + R.randint(0, 9999999)}
    if R.random() < 0.5:
        pl["exp"] = pl["iat"] + 3600
    if R.random() < 0.5:
        pl["scope"] = R.choice(["repo:read", "admin", "deploy write", "read:org"])
    if R.random() < 0.3:
        pl["iss"] = "https://auth." + R.choice(["acme-corp.io", "gastown.dev", "internal.svc"])
    siglen = {"HS256": 43, "RS256": 342, "ES256": 86}[alg]
    return f"{b64u(hdr)}.{b64u(pl)}.{mixed(B64URL, siglen)}"


def pw() -> str:
    return mixed(B62, R.randint(12, 22))


def ipv4_private() -> str:
    c = R.choice(["10", "172", "192"])
    if c == "10":
        return f"10.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(2, 254)}"
    if c == "172":
        return f"172.{R.randint(16, 31)}.{R.randint(0, 255)}.{R.randint(2, 254)}"
    return f"192.168.{R.randint(0, 255)}.{R.randint(2, 254)}"


def ipv4_public() -> str:
    while True:
        a = R.choice(
            [3, 13, 18, 23, 34, 35, 44, 52, 54, 64, 77, 81, 91, 104, 139, 142, 151, 185, 212]
        )
        ip = f"{a}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
        return ip


def ipv6_addr() -> str:
    k = R.choice(["global", "global", "global", "ula", "compressed"])
    if k == "ula":
        return f"fd{rs(HEX, 2)}:{rs(HEX, 4)}:{rs(HEX, 4)}::{R.randint(1, 99)}"
    if k == "compressed":
        return f"2a01:4f8:{rs(HEX, 3)}:{rs(HEX, 4)}::{rs(HEX, 1)}"
    return ":".join(["2607", "f8b0"[:4]] + [rs(HEX, 4).lstrip("0") or "0" for _ in range(6)])


FIRST = [
    "alice",
    "bob",
    "priya",
    "tomas",
    "mkowalski",
    "jdoe",
    "chen.wei",
    "fatima",
    "oleksandr",
    "sara.lindqvist",
    "dmitri",
    "kenji",
    "lucia.fernandez",
    "noah",
    "aisha",
    "rbrennan",
]
DOMAINS = [
    "gmail.com",
    "fastmail.fm",
    "acme-robotics.com",
    "proton.me",
    "outlook.com",
    "corp.initech.io",
    "yahoo.co.uk",
    "hey.com",
    "uni-heidelberg.de",
]


def email() -> str:
    return f"{R.choice(FIRST)}{R.choice(['', '', str(R.randint(1, 99))])}@{R.choice(DOMAINS)}"


def hexs(n: int) -> str:
    return rs(HEX, n)


def pem_body(n_lines: int, prefix: str = "MII") -> list[str]:
    lines = []
    for i in range(n_lines):
        line = mixed(B64, 64)
        if i == 0:
            line = prefix + line[len(prefix) :]
        lines.append(line)
    lines.append(mixed(B64, R.randint(8, 60)) + R.choice(["", "=", "=="]))
    return lines


# ================================================================= SECRETS
def gen_secrets() -> None:
    # ---- AWS access key ids
    ctx = [
        lambda v: f"export AWS_ACCESS_KEY_ID={v}",
        lambda v: f"[default]\naws_access_key_id = {v}\nregion = us-east-1",
        lambda v: f'aws_access_key_id: "{v}"',
        lambda v: (
            f"$ aws configure list\n      Name                    Value             Type    Location\n access_key     ****************{v[-4:]} shared-credentials-file\n# earlier in .env: AWS_ACCESS_KEY_ID={v}"
        ),
        lambda v: f'boto3.client("s3", aws_access_key_id="{v}", region_name="eu-west-1")',
        lambda v: (
            f"{ts()} WARN s3sync: credential {v} lacks s3:PutObject on arn:aws:s3:::gt-artifacts"
        ),
        lambda v: bead(
            "Rotate leaked IAM key", f"Key {v} was pasted in the deploy channel; deactivate it."
        ),
        lambda v: f'{{"AccessKeyId": "{v}", "Status": "Active", "UserName": "ci-deployer"}}',
        lambda v: f"AWS_ACCESS_KEY_ID='{v}' aws s3 ls s3://gt-backups/",
        lambda v: transcript("user", f"use these creds for the test bucket: {v} (read-only)"),
    ]
    for c in ctx:
        v = aws_akid()
        add(c(v), "secret", "aws_access_key", "AWS access key id (AKIA/ASIA + 16 base32)", [v])

    ctx = [
        lambda v: f"export AWS_SECRET_ACCESS_KEY={v}",
        lambda v: f"[prod]\naws_access_key_id = {aws_akid()}\naws_secret_access_key = {v}",
        lambda v: f'AWS_SECRET_ACCESS_KEY="{v}"',
        lambda v: f"  secretAccessKey: '{v}'",
        lambda v: (
            f'{{"Credentials": {{"AccessKeyId": "{aws_akid()}", "SecretAccessKey": "{v}", "SessionToken": null}}}}'
        ),
        lambda v: f's3 = boto3.resource("s3", aws_secret_access_key="{v}")',
        lambda v: transcript(
            "assistant", f"I set `aws_secret_access_key={v}` in ~/.aws/credentials for the run."
        ),
        lambda v: (
            f"docker run -e AWS_SECRET_ACCESS_KEY={v} -e AWS_REGION=us-west-2 gt/uploader:1.4"
        ),
    ]
    for c in ctx:
        v = aws_secret()
        add(
            c(v),
            "secret",
            "aws_secret_key",
            "AWS secret access key (40 base64 chars) in context",
            [v],
        )

    # ---- GCP
    ctx = [
        lambda v: f"GOOGLE_API_KEY={v}",
        lambda v: (
            f'const firebaseConfig = {{ apiKey: "{v}", authDomain: "gt-demo.firebaseapp.com" }};'
        ),
        lambda v: (
            f"curl 'https://maps.googleapis.com/maps/api/geocode/json?address=Berlin&key={v}'"
        ),
        lambda v: f"gemini:\n  api_key: {v}\n  model: gemini-1.5-pro",
        lambda v: f"{ts()} ERROR geocode: 403 for key={v}",
        lambda v: f'genai.configure(api_key="{v}")',
        lambda v: transcript("user", f"here's the places key {v}"),
        lambda v: f"| staging | {v} | maps only |",
    ]
    for c in ctx:
        v = gcp_key()
        add(c(v), "secret", "gcp_api_key", "Google API key (AIza + 35)", [v])

    # ---- Azure
    ctx = [
        lambda v: (
            f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=gtartifacts;AccountKey={v};EndpointSuffix=core.windows.net"
        ),
        lambda v: f'"storageKey": "{v}"',
        lambda v: (
            f"az storage blob upload --account-name gtlogs --account-key {v} -f out.tar -c runs"
        ),
        lambda v: f"AZURE_STORAGE_KEY='{v}'",
        lambda v: f"storage:\n  account: gtlogs\n  key: {v}",
    ]
    for c in ctx:
        v = azure_key()
        add(c(v), "secret", "azure_storage_key", "Azure storage account key (88-char base64)", [v])
    sig = mixed(B62, 43) + "%3D"
    add(
        f"https://gtlogs.blob.core.windows.net/runs/out.tar?sv=2022-11-02&ss=b&srt=o&sp=r&se=2025-01-01T00:00:00Z&st=2024-01-01T00:00:00Z&spr=https&sig={sig}",
        "secret",
        "azure_sas",
        "Azure SAS token signature in URL",
        [sig],
    )

    # ---- GitHub
    ctx = [
        lambda v: f"export GITHUB_TOKEN={v}",
        lambda v: f"GH_TOKEN={v}",
        lambda v: (
            f'curl -H "Authorization: token {v}" https://api.github.com/repos/gastown/gt/pulls'
        ),
        lambda v: (
            f'curl -sS -H "Authorization: Bearer {v}" -H "Accept: application/vnd.github+json" https://api.github.com/user'
        ),
        lambda v: f"git remote add origin https://{v}@github.com/gastown/beads.git",
        lambda v: f"echo {v} | gh auth login --with-token",
        lambda v: f"github:\n  token: {v}\n  org: gastown",
        lambda v: f'[github]\ntoken = "{v}"',
        lambda v: f'{{"github_token": "{v}", "repo": "gastown/gt"}}',
        lambda v: f'Octokit.new(access_token: "{v}")',
        lambda v: f"const octokit = new Octokit({{ auth: '{v}' }});",
        lambda v: f'gh = Github("{v}")',
        lambda v: transcript(
            "assistant",
            f"The clone failed because the token `{v}` has expired; ask the overseer for a new one.",
        ),
        lambda v: bead("CI cannot push", f"Runner uses {v} which lacks workflow scope."),
        lambda v: f"{ts()} DEBUG http: GET https://api.github.com/rate_limit token={v} -> 200",
        lambda v: f"I rotated the PAT. New one is {v} — please update the refinery config.",
        lambda v: f"- name: checkout\n  uses: actions/checkout@v4\n  with:\n    token: {v}",
        lambda v: f"password={v}\nusername=x-access-token",
    ]
    for c in ctx:
        v = gh_token()
        add(
            c(v),
            "secret",
            "github_token",
            "GitHub token (ghp_/gho_/ghu_/ghs_/ghr_/github_pat_)",
            [v],
        )

    ctx = [
        lambda v: f"export GITLAB_TOKEN={v}",
        lambda v: f'curl --header "PRIVATE-TOKEN: {v}" "https://gitlab.com/api/v4/projects"',
        lambda v: f"gitlab:\n  private_token: {v}",
        lambda v: transcript("user", f"gitlab PAT: {v}"),
        lambda v: f"glab auth login --token {v}",
    ]
    for c in ctx:
        v = glpat()
        add(c(v), "secret", "gitlab_token", "GitLab personal access token (glpat-)", [v])

    # ---- Slack
    ctx = [
        lambda v: f"SLACK_BOT_TOKEN={v}",
        lambda v: f"export SLACK_TOKEN='{v}'",
        lambda v: (
            f'curl -X POST -H "Authorization: Bearer {v}" -H "Content-type: application/json" https://slack.com/api/chat.postMessage -d \'{{"channel":"C04QW7E2ZKM","text":"build green"}}\''
        ),
        lambda v: f'app = App(token="{v}", signing_secret=os.environ["SLACK_SIGNING_SECRET"])',
        lambda v: f"slack:\n  bot_token: \"{v}\"\n  channel: '#gt-alerts'",
        lambda v: f"{ts()} ERROR notifier: slack rejected token {v}: invalid_auth",
        lambda v: bead("Slack notifier broken", f"token {v} revoked after workspace migration"),
        lambda v: (
            f'{{"ok": true, "access_token": "{v}", "token_type": "bot", "scope": "chat:write"}}'
        ),
        lambda v: transcript(
            "assistant", f"Using the Slack token {v} from .env to post the summary."
        ),
        lambda v: f"const web = new WebClient('{v}');",
    ]
    for c in ctx:
        v = slack_token()
        add(c(v), "secret", "slack_token", "Slack token (xoxb/xoxp/xapp/xoxe)", [v])
    ctx = [
        lambda v: f"SLACK_WEBHOOK_URL={v}",
        lambda v: (
            f"curl -X POST -H 'Content-type: application/json' --data '{{\"text\":\"deploy done\"}}' {v}"
        ),
        lambda v: f'webhook: "{v}"',
        lambda v: transcript("user", f"post failures to {v}"),
    ]
    for c in ctx:
        v = slack_webhook()
        add(c(v), "secret", "slack_webhook", "Slack incoming-webhook URL", [v.rsplit("/", 1)[1]])

    # ---- Stripe
    ctx = [
        lambda v: f"STRIPE_SECRET_KEY={v}",
        lambda v: f'stripe.api_key = "{v}"',
        lambda v: f"curl https://api.stripe.com/v1/charges -u {v}:",
        lambda v: f"const stripe = require('stripe')('{v}');",
        lambda v: f"stripe:\n  secret_key: {v}\n  currency: eur",
        lambda v: f"{ts()} INFO billing: init client key={v}",
        lambda v: transcript(
            "assistant",
            f"Found the key `{v}` hard-coded in billing/client.py; moving it to the vault.",
        ),
        lambda v: bead("Remove hard-coded Stripe key", f"billing/client.py:12 has {v}"),
        lambda v: f'STRIPE_WEBHOOK_SECRET="{v}"',
        lambda v: f'{{"stripe_key": "{v}", "mode": "live"}}',
        lambda v: f'curl https://api.stripe.com/v1/customers -H "Authorization: Bearer {v}"',
        lambda v: f"export STRIPE_API_KEY={v}",
    ]
    for c in ctx:
        v = stripe_key()
        add(c(v), "secret", "stripe_key", "Stripe secret/restricted/test/webhook key", [v])

    # ---- OpenAI
    ctx = [
        lambda v: f"OPENAI_API_KEY={v}",
        lambda v: f'export OPENAI_API_KEY="{v}"',
        lambda v: f'client = OpenAI(api_key="{v}")',
        lambda v: (
            f'curl https://api.openai.com/v1/chat/completions -H "Content-Type: application/json" -H "Authorization: Bearer {v}" -d @req.json'
        ),
        lambda v: f"openai:\n  api_key: {v}\n  model: gpt-4o-mini",
        lambda v: f'[providers.openai]\napi_key = "{v}"',
        lambda v: f"{ts()} ERROR openai: 401 Incorrect API key provided: {v}.",
        lambda v: transcript("user", f"try with my key {v} instead"),
        lambda v: bead("Eval harness needs key", f"Temporarily using {v} until the org key lands."),
        lambda v: f"const openai = new OpenAI({{ apiKey: '{v}' }});",
        lambda v: f"os.environ['OPENAI_API_KEY'] = '{v}'",
        lambda v: f'{{"openai_api_key": "{v}"}}',
        lambda v: f"llm keys set openai --value {v}",
        lambda v: f"Authorization: Bearer {v}",
    ]
    for c in ctx:
        v = openai_key()
        add(
            c(v), "secret", "openai_key", "OpenAI key (legacy T3BlbkFJ, sk-proj/svcacct/admin)", [v]
        )

    # ---- Anthropic
    ctx = [
        lambda v: f"ANTHROPIC_API_KEY={v}",
        lambda v: f"export ANTHROPIC_API_KEY='{v}'",
        lambda v: f'client = anthropic.Anthropic(api_key="{v}")',
        lambda v: (
            f'curl https://api.anthropic.com/v1/messages -H "x-api-key: {v}" -H "anthropic-version: 2023-06-01" -H "content-type: application/json" -d @msg.json'
        ),
        lambda v: f'anthropic:\n  api_key: "{v}"',
        lambda v: f"export CLAUDE_CODE_OAUTH_TOKEN={v}",
        lambda v: f"{ts()} WARN polecat-3: claude exited: invalid x-api-key {v}",
        lambda v: transcript(
            "assistant", f"The mayor's env has ANTHROPIC_API_KEY={v}; I won't print it again."
        ),
        lambda v: bead("Witness can't start Claude", f"Stale key {v} in ~/gt/.env"),
        lambda v: f"const anthropic = new Anthropic({{ apiKey: '{v}' }});",
        lambda v: f'{{"env": {{"ANTHROPIC_API_KEY": "{v}"}}, "model": "claude-sonnet-4"}}',
        lambda v: f'[anthropic]\nkey = "{v}"',
        lambda v: f"x-api-key: {v}",
        lambda v: f"gt config set anthropic.key {v}",
    ]
    for c in ctx:
        v = anthropic_key()
        add(c(v), "secret", "anthropic_key", "Anthropic key (sk-ant-api03/admin01/oat01)", [v])

    # ---- other vendors
    others = [
        ("hf_" + mixed(UP + LO, 34), lambda v: f"HF_TOKEN={v}", "Hugging Face token"),
        (
            "hf_" + mixed(UP + LO, 34),
            lambda v: f"huggingface-cli login --token {v}",
            "Hugging Face token",
        ),
        (
            "npm_" + mixed(B62, 36),
            lambda v: f"//registry.npmjs.org/:_authToken={v}",
            "npm token in .npmrc",
        ),
        ("npm_" + mixed(B62, 36), lambda v: f"NPM_TOKEN={v}", "npm token"),
        (
            "pypi-AgEIcHlwaS5vcmc" + mixed(B64URL, 70),
            lambda v: f"[pypi]\n  username = __token__\n  password = {v}",
            "PyPI token in .pypirc",
        ),
        (
            "pypi-AgEIcHlwaS5vcmc" + mixed(B64URL, 70),
            lambda v: f"twine upload -u __token__ -p {v} dist/*",
            "PyPI token",
        ),
        (
            "SG." + mixed(B64URL, 22) + "." + mixed(B64URL, 43),
            lambda v: f"SENDGRID_API_KEY={v}",
            "SendGrid key",
        ),
        ("xai-" + mixed(B62, 80), lambda v: f"export XAI_API_KEY={v}", "xAI key"),
        ("gsk_" + mixed(B62, 52), lambda v: f'groq_client = Groq(api_key="{v}")', "Groq key"),
        ("r8_" + mixed(B62, 37), lambda v: f"REPLICATE_API_TOKEN={v}", "Replicate token"),
        (
            "lin_api_" + mixed(B62, 40),
            lambda v: f'curl -H "Authorization: {v}" https://api.linear.app/graphql',
            "Linear key",
        ),
        ("dop_v1_" + hexs(64), lambda v: f"doctl auth init -t {v}", "DigitalOcean token"),
        (
            "hvs." + mixed(B64URL, 91),
            lambda v: f"export VAULT_TOKEN={v}",
            "HashiCorp Vault service token",
        ),
        (
            "GOCSPX-" + mixed(B64URL, 28),
            lambda v: (
                f'{{"web": {{"client_id": "{rs(DIG, 12)}-{rs(LO + DIG, 32)}.apps.googleusercontent.com", "client_secret": "{v}"}}}}'
            ),
            "Google OAuth client secret",
        ),
        (
            "ya29.a0" + mixed(B64URL, 150),
            lambda v: (
                f'curl -H "Authorization: Bearer {v}" https://www.googleapis.com/drive/v3/files'
            ),
            "Google OAuth access token",
        ),
        ("shpat_" + hexs(32), lambda v: f"SHOPIFY_ACCESS_TOKEN={v}", "Shopify token"),
        (
            "AGE-SECRET-KEY-1" + rs("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L".upper(), 58),
            lambda v: (
                f"# created: 2024-03-01T10:00:00Z\n# public key: age1{rs('qpzry9x8gf2tvdw0s3jn54khce6mua7l', 58)}\n{v}"
            ),
            "age secret key",
        ),
        (
            f"{rs(DIG, 10)}:AA{mixed(B64URL, 33)}",
            lambda v: f"TELEGRAM_BOT_TOKEN={v}",
            "Telegram bot token",
        ),
        (
            "SK" + hexs(32),
            lambda v: f"TWILIO_API_KEY={'SK' + hexs(32)}\nTWILIO_API_SECRET={v}",
            "Twilio API secret (context)",
        ),
        (
            "dapi" + hexs(32),
            lambda v: (
                f"databricks configure --token\nHost: https://adb-1234.azuredatabricks.net\nToken: {v}"
            ),
            "Databricks PAT",
        ),
        ("PMAK-" + hexs(24) + "-" + hexs(34), lambda v: f"POSTMAN_API_KEY={v}", "Postman key"),
        (
            "ATATT3xFfGF0" + mixed(B64URL, 170) + "=" + hexs(8).upper(),
            lambda v: f"JIRA_API_TOKEN={v}",
            "Atlassian API token",
        ),
    ]
    for v, c, note in others:
        add(c(v), "secret", "other_vendor_token", note, [v])

    # ---- JWT
    ctx = [
        lambda v: f"Authorization: Bearer {v}",
        lambda v: f'curl -H "Authorization: Bearer {v}" https://api.gastown.internal/v1/convoys',
        lambda v: f"export SESSION_JWT={v}",
        lambda v: f'{{"access_token": "{v}", "token_type": "Bearer", "expires_in": 3600}}',
        lambda v: f"{ts()} DEBUG auth: verified jwt {v}",
        lambda v: f"Cookie: session={v}; Path=/; HttpOnly",
        lambda v: transcript("tool", f"HTTP/1.1 200 OK\nSet-Cookie: id_token={v}"),
        lambda v: f"token: {v}",
        lambda v: f'headers = {{"Authorization": f"Bearer {v}"}}',
        lambda v: f"https://app.gastown.dev/callback#access_token={v}&state=xyz",
        lambda v: bead("Token in logs", f"The refinery logged a full JWT: {v}"),
        lambda v: f"jwt decode {v}",
    ]
    for c in ctx:
        v = jwt()
        add(c(v), "secret", "jwt", "JSON Web Token", [v])

    # ---- PEM private keys
    kinds = [
        "RSA PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "EC PRIVATE KEY",
        "PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "DSA PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ]
    pems = []
    for i in range(10):
        k = kinds[i % len(kinds)]
        prefix = (
            "b3BlbnNzaC1rZXktdjEAAAAA"
            if k.startswith("OPENSSH")
            else ("lQ" if k.startswith("PGP") else "MII")
        )
        body = pem_body(R.randint(5, 10), prefix)
        pems.append((k, body))
    for i, (k, body) in enumerate(pems):
        head, tail = f"-----BEGIN {k}-----", f"-----END {k}-----"
        if k.startswith("PGP"):
            block = head + "\n\n" + "\n".join(body) + "\n=" + mixed(B64, 4) + "\n" + tail
        else:
            block = head + "\n" + "\n".join(body) + "\n" + tail
        if i == 0:
            text = block
        elif i == 1:
            text = "$ cat ~/.ssh/id_ed25519\n" + block + "\n$ "
        elif i == 2:
            text = "tls:\n  key: |\n" + "\n".join("    " + ln for ln in block.split("\n"))
        elif i == 3:
            text = json.dumps(
                {
                    "type": "service_account",
                    "project_id": "gt-prod",
                    "private_key_id": hexs(40),
                    "private_key": block + "\n",
                    "client_email": "ci@gt-prod.iam.gserviceaccount.com",
                }
            )
        elif i == 4:
            text = f"cat > key.pem <<'EOF'\n{block}\nEOF"
        elif i == 5:
            text = transcript("tool", block)
        elif i == 6:
            text = "Here is the signing key for the release bot:\n\n```\n" + block + "\n```"
        elif i == 7:
            # truncated output: body but no END line
            text = (
                "$ kubectl get secret gt-tls -o jsonpath='{.data.tls\\.key}' | base64 -d | head -5\n"
                + f"-----BEGIN {k}-----\n"
                + "\n".join(body[:4])
            )
            body = body[:4]
        elif i == 8:
            text = f'PRIVATE_KEY="{block}"'
        else:
            text = bead("Leaked deploy key", "Found in repo history:\n" + block)
        add(text, "secret", "pem_private_key", f"PEM {k}", [ln for ln in body if len(ln) >= 16])

    # ---- passwords in URLs
    def host() -> str:
        return R.choice(
            [
                "db.internal",
                "pg-prod.gastown.svc",
                "cluster0.x7k2p.mongodb.net",
                "cache.gt.local",
                "mq.internal",
                "files.acme-corp.io",
            ]
        )

    ctx = [
        lambda p: f"DATABASE_URL=postgres://app:{p}@{host()}:5432/gt_prod",
        lambda p: f'SQLALCHEMY_DATABASE_URI = "postgresql+psycopg2://svc_user:{p}@{host()}/beads"',
        lambda p: f"REDIS_URL=redis://:{p}@{host()}:6379/0",
        lambda p: (
            f"mongodb+srv://admin:{p}@cluster0.x7k2p.mongodb.net/gt?retryWrites=true&w=majority"
        ),
        lambda p: f"amqp://deployer:{p}@mq.internal:5672/%2F",
        lambda p: f"git clone https://oauth2:{p}@gitlab.com/gastown/rigs.git",
        lambda p: (
            f"pip install --index-url https://__token__:{p}@pypi.gastown.dev/simple/ gt-tools"
        ),
        lambda p: f"ftp://deploy:{p}@files.acme-corp.io/releases/",
        lambda p: f"{ts()} ERROR db: could not connect to mysql://root:{p}@{host()}:3306/app",
        lambda p: transcript(
            "assistant", f"Connecting with `psql postgresql://gtadmin:{p}@{host()}/gt`"
        ),
        lambda p: f'database:\n  url: "postgres://reporter:{p}@{host()}/analytics"',
        lambda p: f"https://jenkins:{p}@ci.acme-corp.io/job/gt/build",
        lambda p: f"proxy = http://corp%5Cjsmith:{p}@proxy.acme-corp.io:3128",
        lambda p: f'[remote "origin"]\n\turl = https://mayor-bot:{p}@github.com/gastown/gt.git',
    ]
    for i, c in enumerate(ctx):
        p = pw() if i not in (5,) else glpat()
        if i == 12:
            p = rs(B62, 8) + "%21" + rs(B62, 6)
        add(c(p), "secret", "url_password", "credential in URL userinfo", [p])

    # ---- IPv4
    ctx = [
        lambda ip: f"ssh ubuntu@{ip}",
        lambda ip: f"{ts()} INFO api: request from {ip} GET /v1/beads 200",
        lambda ip: f"DB_HOST={ip}",
        lambda ip: f"  host: {ip}\n  port: 5432",
        lambda ip: f'{ip} - - [12/Mar/2024:10:15:32 +0000] "GET /healthz HTTP/1.1" 200 2',
        lambda ip: f"Connection to {ip} port 22: Connection refused",
        lambda ip: transcript(
            "tool",
            f"PING {ip} ({ip}): 56 data bytes\n64 bytes from {ip}: icmp_seq=0 ttl=54 time=11.2 ms",
        ),
        lambda ip: f'{{"peer": "{ip}:31337", "state": "connected"}}',
        lambda ip: f"curl http://{ip}:8080/metrics",
        lambda ip: bead("Node down", f"hetzner box {ip} stopped answering after the kernel update"),
        lambda ip: f"server {ip}:9000 weight=5;",
        lambda ip: f"inet {ip}/24 brd 10.0.0.255 scope global eth0",
        lambda ip: f"Failed password for invalid user admin from {ip} port 53122 ssh2",
        lambda ip: f'[[peers]]\naddress = "{ip}"',
    ]
    for i, c in enumerate(ctx):
        ip = ipv4_private() if i % 2 else ipv4_public()
        add(c(ip), "secret", "ipv4", "IPv4 host address", [ip])

    # ---- IPv6
    ctx = [
        lambda ip: f"ssh -6 deploy@{ip}",
        lambda ip: f"{ts()} INFO api: request from {ip} GET /v1/convoys 200",
        lambda ip: f"curl -g 'http://[{ip}]:8080/healthz'",
        lambda ip: f"    inet6 {ip}/64 scope global dynamic",
        lambda ip: f'{{"remote_addr": "{ip}"}}',
        lambda ip: f"AAAA record for gt.acme-corp.io -> {ip}",
        lambda ip: bead("IPv6 peering", f"peer {ip} flaps every 10 minutes"),
        lambda ip: f'listen_addr = "[{ip}]:4001"',
    ]
    for c in ctx:
        ip = ipv6_addr()
        add(c(ip), "secret", "ipv6", "IPv6 host address", [ip])

    # ---- e-mail
    ctx = [
        lambda e: f"Author: {e.split('@')[0].title()} <{e}>",
        lambda e: f'git config --global user.email "{e}"',
        lambda e: f"Co-Authored-By: {e.split('@')[0]} <{e}>",
        lambda e: f"maintainer: {e}",
        lambda e: f'{{"assignee": "{e}", "status": "in_progress"}}',
        lambda e: f"Please contact {e} for access to the staging rig.",
        lambda e: f"{ts()} INFO auth: login ok user={e}",
        lambda e: f'<a href="mailto:{e}">email me</a>',
        lambda e: transcript("user", f"cc {e} on the PR"),
        lambda e: bead("Access request", f"Requested by {e}"),
        lambda e: f'authors = ["Jane Roe <{e}>"]',
        lambda e: f"From: {e}\nTo: oncall@acme-robotics.com\nSubject: disk full",
        lambda e: f"gcloud auth login {e}",
        lambda e: f"ALERT_EMAIL={e}",
    ]
    for c in ctx:
        e = email()
        add(c(e), "secret", "email", "personal/company e-mail address", [e])

    # ---- home paths
    users = [
        "alice",
        "mkowalski",
        "priya",
        "tomas",
        "jdoe",
        "dmitri",
        "kenji",
        "fatima",
        "rbrennan",
        "chenwei",
        "sara",
        "noah",
        "aisha",
        "oleks",
    ]
    ctx = [
        lambda u: (f"cd /home/{u}/gt/rigs/gastown && bd ready", f"/home/{u}"),
        lambda u: (
            f'  File "/home/{u}/.venv/lib/python3.11/site-packages/httpx/_client.py", line 1015, in send',
            f"/home/{u}",
        ),
        lambda u: (json.dumps({"cwd": f"/Users/{u}/src/gastown", "type": "user"}), f"/Users/{u}"),
        lambda u: (
            f"{ts()} INFO loaded config from /home/{u}/.config/gt/config.toml",
            f"/home/{u}",
        ),
        lambda u: (
            f"C:\\Users\\{u}\\AppData\\Local\\Programs\\Python\\Python311\\python.exe",
            f"C:\\Users\\{u}",
        ),
        lambda u: (f"export PATH=/Users/{u}/go/bin:$PATH", f"/Users/{u}"),
        lambda u: (
            transcript(
                "tool",
                f"ls: cannot access '/home/{u}/gt/mayor/state.json': No such file or directory",
            ),
            f"/home/{u}",
        ),
        lambda u: (f'workdir = "/home/{u}/work/node0"', f"/home/{u}"),
        lambda u: (
            bead("Fix path", f"hard-coded /Users/{u}/Projects/gt in tests/conftest.py"),
            f"/Users/{u}",
        ),
        lambda u: (f"-rw-r--r-- 1 {u} staff 1204 Mar  3 10:12 /Users/{u}/.zshrc", f"/Users/{u}"),
        lambda u: (f"volumes:\n  - /home/{u}/data:/data", f"/home/{u}"),
        lambda u: (
            f'Traceback (most recent call last):\n  File "/home/{u}/gt/node0/corpus/build.py", line 88, in <module>',
            f"/home/{u}",
        ),
        lambda u: (
            json.dumps({"path": f"C:\\Users\\{u}\\Documents\\gt\\beads.jsonl"}),
            "C:\\\\Users\\\\" + u,
        ),
        lambda u: (f"git -C /home/{u}/src/beads status", f"/home/{u}"),
    ]
    for c, u in zip(ctx, users, strict=True):
        text, s = c(u)
        add(text, "secret", "home_path", "personal home directory naming a user", [s])

    # ---- high-entropy / generic secrets by context
    he = [
        (mixed(B62 + "!@#%^&*(-_=+)", 50), lambda v: f"SECRET_KEY = '{v}'", "Django SECRET_KEY"),
        (mixed(B64URL, 40), lambda v: f'"client_secret": "{v}"', "OAuth client secret"),
        (hexs(64), lambda v: f"SESSION_SECRET={v}", "hex session secret"),
        (
            mixed(B62, 32),
            lambda v: f"curl -H 'X-Api-Key: {v}' https://api.acme-corp.io/v2/items",
            "API key header",
        ),
        (mixed(B62, 40), lambda v: f"WEBHOOK_SECRET={v}", "webhook secret"),
        (hexs(32), lambda v: f"DD_API_KEY={v}", "Datadog API key (32 hex, context)"),
        (mixed(B64URL, 40), lambda v: f"CLOUDFLARE_API_TOKEN={v}", "Cloudflare API token"),
        (mixed(B62, 48), lambda v: f"gt sling --token {v} gt-4f2a", "CLI --token flag"),
        (
            base64.b64encode(R.randbytes(32)).decode(),
            lambda v: f"encryption_key: {v}",
            "base64 32-byte key",
        ),
        (mixed(B62, 44), lambda v: f"{ts()} DEBUG auth: api_key={v} accepted", "api_key in log"),
        (
            mixed(B64URL, 43),
            lambda v: transcript("user", f"the deploy token is {v}"),
            "token in prose",
        ),
        (hexs(40), lambda v: f'const API_SECRET = "{v}";', "hex secret in JS"),
        (mixed(B62, 36), lambda v: f'[auth]\nsigning_key = "{v}"', "signing key in TOML"),
        (mixed(B62, 30), lambda v: f"access_token: {v}", "access token YAML"),
    ]
    for v, c, note in he:
        add(c(v), "secret", "high_entropy", note, [v])

    # ---- passwords by assignment context (not in URLs)
    pa = [
        ("Zq7!mR2#pLx9", lambda v: f"DB_PASSWORD={v}", "env password"),
        ("Tr4ck-Mule-88!", lambda v: f'password: "{v}"', "yaml password"),
        (
            "w9Lk2qP0vX",
            lambda v: f"PGPASSWORD='{v}' psql -h db.internal -U app gt_prod",
            "PGPASSWORD",
        ),
        ("S3cr3tP@ss2024", lambda v: f"mysql -u root -p{v} -e 'show databases'", "mysql -p"),
        ("Kf83!hdQ0z", lambda v: f'{{"username": "svc-gt", "password": "{v}"}}', "json password"),
        ("Rz8kq2Lw77", lambda v: f"redis-cli -h cache.gt.local -a {v} ping", "redis-cli -a"),
        ("Ub3rS3cure_xx9", lambda v: f"spring.datasource.password={v}", "properties password"),
        (
            "hX4!pQ9vN2",
            lambda v: f"docker login registry.acme-corp.io -u ci --password {v}",
            "--password flag",
        ),
    ]
    for v, c, note in pa:
        add(c(v), "secret", "password_assignment", note, [v])


# ================================================================= CLEAN (hard negatives)
def gen_clean() -> None:
    def c(text: str, kind: str, note: str) -> None:
        add(text, "clean", kind, note)

    import uuid as _uuid

    def uid() -> str:
        return str(_uuid.UUID(bytes=R.randbytes(16), version=4))

    # UUIDs
    c(f"request_id={uid()}", "uuid", "request id")
    c(f'{{"session_id": "{uid()}", "role": "polecat"}}', "uuid", "session id")
    c(f"{ts()} INFO convoy {uid()} finished in 42.1s", "uuid", "log")
    c(f"x-amzn-RequestId: {uid()}", "uuid", "AWS request id header")
    c(f"CREATE TABLE beads (id UUID PRIMARY KEY DEFAULT '{uid()}');", "uuid", "sql")
    c(f"trace: {uid().replace('-', '')}", "uuid", "uuid without dashes")
    c(f"~/.claude/projects/-work-main/{uid()}.jsonl", "uuid", "claude session file")
    c(f"Run `gt nudge {uid()}` to wake the polecat.", "uuid", "prose")

    # git SHAs
    for _ in range(4):
        s = sha40()
        c(
            f"commit {s}\nAuthor: Mayor Bot <mayor@example.com>\nDate:   Tue Mar 5 10:12:01 2024 +0000\n\n    fix: retry on 502",
            "git_sha",
            "git log entry",
        )
    c(
        f"{hexs(7)} fix(corpus): reconcile counts\n{hexs(7)} feat: add quarantine\n{hexs(7)} chore: bump deps",
        "git_sha",
        "git log --oneline",
    )
    c(f"git cherry-pick {hexs(12)}", "git_sha", "short sha")
    c(
        f"HEAD is now at {hexs(7)} Merge pull request #412 from gastown/polecat-7",
        "git_sha",
        "reset output",
    )
    c(f"  - uses: actions/checkout@{sha40()} # v4.1.1", "git_sha", "pinned action sha")
    c(f"Merge: {hexs(7)} {hexs(7)}", "git_sha", "merge line")
    c(
        f"index {hexs(7)}..{hexs(7)} 100644\n--- a/corpus/build.py\n+++ b/corpus/build.py",
        "git_sha",
        "diff header",
    )
    c(f'{{"head_sha": "{sha40()}", "conclusion": "success"}}', "git_sha", "CI json")
    c(f"{sha40()} refs/heads/main\n{sha40()} refs/tags/v0.3.1", "git_sha", "ls-remote")
    c(f'rev = "{sha40()}"', "git_sha", "pinned rev in toml")
    c(f"bisect: first bad commit is {sha40()}", "git_sha", "bisect")

    # sha256 / checksums
    c(
        f"sha256sum dist/gt-0.4.0.tar.gz\n{hexs(64)}  dist/gt-0.4.0.tar.gz",
        "sha256",
        "sha256sum output",
    )
    c(f'{{"file": "sft/mayor.jsonl", "sha256": "{hexs(64)}"}}', "sha256", "manifest entry")
    c(f'checksum = "{hexs(64)}"', "sha256", "Cargo.lock checksum")
    c(f"gt-tools==0.4.0 --hash=sha256:{hexs(64)}", "sha256", "pip hash")
    c(
        f"golang.org/x/net v0.21.0 h1:{base64.b64encode(R.randbytes(32)).decode()}",
        "sha256",
        "go.sum h1 hash",
    )
    c(
        f'  hashes = [\n    "h1:{base64.b64encode(R.randbytes(32)).decode()}",\n    "zh:{hexs(64)}",\n  ]',
        "sha256",
        "terraform lock",
    )
    c(f"SHA256 ({'model.safetensors'}) = {hexs(64)}", "sha256", "bsd sha256")
    c(f'etag: "{hexs(32)}"', "sha256", "S3 ETag md5")
    c(f"md5: {hexs(32)}", "sha256", "md5")
    c(f"blake3 {hexs(64)}", "sha256", "blake3")

    # docker digests
    c(f"docker pull ghcr.io/gastown/gt@sha256:{hexs(64)}", "docker_digest", "pull by digest")
    c(f"image: python:3.11-slim@sha256:{hexs(64)}", "docker_digest", "compose pin")
    c(
        f"Digest: sha256:{hexs(64)}\nStatus: Downloaded newer image for node:20",
        "docker_digest",
        "pull output",
    )
    c(
        f"FROM nvidia/cuda:12.2.0-runtime-ubuntu22.04@sha256:{hexs(64)}",
        "docker_digest",
        "Dockerfile",
    )
    c(f" => => writing image sha256:{hexs(64)} done", "docker_digest", "buildkit output")
    c(f"{hexs(12)}   gt/uploader   1.4   2 days ago   148MB", "docker_digest", "docker images")

    # npm integrity
    for _ in range(3):
        c(
            f'"integrity": "sha512-{base64.b64encode(R.randbytes(64)).decode()}"',
            "npm_integrity",
            "package-lock integrity",
        )
    c(
        f"  integrity sha512-{base64.b64encode(R.randbytes(64)).decode()}",
        "npm_integrity",
        "yarn.lock",
    )
    c(
        f'<script src="https://cdn.jsdelivr.net/npm/htmx.org@1.9.10" integrity="sha384-{base64.b64encode(R.randbytes(48)).decode()}" crossorigin="anonymous"></script>',
        "npm_integrity",
        "SRI",
    )
    c(
        f"resolution: {{integrity: sha512-{base64.b64encode(R.randbytes(64)).decode()}}}",
        "npm_integrity",
        "pnpm lock",
    )

    # base64 of ordinary text
    for s in [
        "The quick brown fox jumps over the lazy dog",
        "hello world from the mayor",
        "polecat-7 finished bead gt-4f2a with outcome success",
        '{"kind":"Config","apiVersion":"v1"}',
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit",
        "#!/bin/sh\necho starting witness\n",
    ]:
        b = base64.b64encode(s.encode()).decode()
        c(
            R.choice([f"echo {b} | base64 -d", f"banner: {b}", f'"data": "{b}"', f"payload={b}"]),
            "base64_text",
            f"base64 of {s[:20]!r}",
        )
    c(
        f"![logo](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAA{mixed(B64, 60)}AAAAAElFTkSuQmCC)",
        "base64_text",
        "inline PNG",
    )
    c('"node_id": "MDQ6VXNlcjU4MzIzMQ=="', "base64_text", "GitHub GraphQL node id")

    # versions / dotted numbers
    for t in [
        "version 1.2.3.4 of the plugin",
        "Bumped gt from 0.3.9 to 0.4.0",
        "torch==2.3.1+cu121",
        "Chrome/120.0.6099.109 Safari/537.36",
        '__version__ = "4.2.1.0"',
        "FileVersion: 10.0.19041.1",
        'requires-python = ">=3.10"',
        "v2.14.0-rc.1",
        "Linux 6.5.0-1022-aws #22~22.04.1-Ubuntu",
        "see section 3.2.1.4 of the spec",
        "assembly version 3.1.4.1",
        "go 1.22.1",
        "ruff 0.4.8",
        "numpy 1.26.4 / scipy 1.12.0 / pandas 2.2.1",
    ]:
        c(t, "version", "version number")

    # OIDs
    for t in [
        "OID 1.3.6.1.4.1.311.21.7",
        "extKeyUsage: 1.3.6.1.5.5.7.3.1 (serverAuth)",
        "2.5.4.3 = commonName",
        "snmpget -v2c -c public localhost 1.3.6.1.2.1.1.3.0",
        "oid: 1.2.840.113549.1.1.11 (sha256WithRSAEncryption)",
        "urn:oid:2.16.840.1.101.3.4.2.1",
    ]:
        c(t, "oid", "ASN.1 object identifier")

    # placeholders / examples
    for t, note in [
        ("OPENAI_API_KEY=sk-...", "ellipsis"),
        ("export ANTHROPIC_API_KEY=YOUR_API_KEY", "placeholder"),
        (
            'curl -H "Authorization: Bearer <token>" https://api.github.com/user',
            "angle placeholder",
        ),
        ("GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "x-filled placeholder"),
        ("Anthropic keys look like `sk-ant-api03-...`; never commit them.", "doc prose"),
        (
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AWS documented example",
        ),
        ("STRIPE_SECRET_KEY=sk_live_REPLACE_ME", "replace me"),
        ("slack:\n  bot_token: xoxb-your-bot-token", "placeholder"),
        ('api_key: "${OPENAI_API_KEY}"', "env reference"),
        ("token: {{ .Values.github.token }}", "template"),
        ("GH_TOKEN: ${{ secrets.GITHUB_TOKEN }}", "actions secret ref"),
        ('api_key = os.environ["ANTHROPIC_API_KEY"]', "env lookup"),
        ("export GITHUB_TOKEN=$(gh auth token)", "command substitution"),
        ("The key was replaced by <SECRET:github_token> in the transcript.", "already scrubbed"),
        ("ANTHROPIC_API_KEY=<SECRET:anthropic_key>", "already scrubbed"),
        ("password: ********", "masked"),
        ("Authorization: Bearer $TOKEN", "shell var"),
        ("API_KEY=changeme-in-production", "doc placeholder"),
        ("Classic GitHub PATs start with ghp_, fine-grained ones with github_pat_.", "prefix docs"),
        ("Slack bot tokens begin with xoxb- and user tokens with xoxp-.", "prefix docs"),
        ("OPENAI_API_KEY=sk-proj-REDACTED", "redacted"),
        ("aws_secret_access_key = <your-secret-key>", "placeholder"),
        ("DATABASE_URL=postgres://user:password@localhost:5432/dbname", "doc default url"),
        ("HF_TOKEN=hf_xxx", "short placeholder"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY----- … paste your key here … -----END OPENSSH PRIVATE KEY-----",
            "PEM header only",
        ),
        (
            "Keys must start with `-----BEGIN RSA PRIVATE KEY-----`; PKCS#8 files use `-----BEGIN PRIVATE KEY-----`.",
            "PEM header docs",
        ),
    ]:
        c(t, "placeholder", note)

    # documentation / loopback addresses
    for t in [
        "curl http://127.0.0.1:8080/healthz",
        "listen 0.0.0.0:443",
        "server 192.0.2.10:9000;",
        "Example: ping 198.51.100.7",
        "allow 203.0.113.0/24;",
        "inet6 ::1/128 scope host",
        "ip -6 route add 2001:db8:85a3::/48 via 2001:db8::1",
        "netmask 255.255.255.0 broadcast 255.255.255.255",
        'bind = "[::]:4001"',
        "http://localhost:3000/api",
        "host all all 127.0.0.1/32 trust",
    ]:
        c(t, "doc_ip", "loopback/unspecified/documentation/netmask address")

    # documentation e-mails
    for t in [
        'git config user.email "you@example.com"',
        "Author: Mayor Bot <mayor@example.com>",
        "contact: admin@example.org",
        "alice@test.invalid",
        "ADMIN_EMAIL=ops@gastown.example",
        "user@localhost",
        "noreply@example.net will bounce",
    ]:
        c(t, "doc_email", "RFC 2606/6761 reserved domain")

    # @-lookalikes that are not e-mails
    for t in [
        "git remote add origin git@github.com:gastown/gt.git",
        "git@gitlab.com:gastown/rigs.git",
        "npm install @types/node@20.11.5 @anthropic-ai/sdk@0.24.3",
        '@pytest.fixture(scope="session")\ndef corpus_dir(tmp_path_factory):',
        "brew install python@3.11 node@18",
        "uses: actions/setup-python@v5",
        "@mayor please review gt-4f2a",
        'import { z } from "zod@3.22.4";',
        "pip install 'gt-tools @ git+https://github.com/gastown/gt-tools@v0.2.1'",
        "docker.io/library/redis@latest",
    ]:
        c(t, "not_email", "@ that is not an e-mail")

    # IPv6-ish lookalikes
    for t in [
        "std::vector<std::string> names;",
        "use std::io::Result;",
        "xs = data[::2]",
        "12:34:56.789 INFO started",
        "dead:beef is a hex joke",
        "fn main() -> Result<(), Box<dyn std::error::Error>>",
        "Duration: 01:02:03",
        "ratio 16:9 at 1920x1080",
        "standup 10:30:00-10:45:00 daily",
        "Foo::Bar::baz(a, b)",
    ]:
        c(t, "ipv6_lookalike", "colon-separated non-address")

    # CSS colors
    for t in [
        "color: #1e90ff;",
        "background: #fafafa; border-color: #333",
        "--accent: #ff6b6bcc;",
        'fill="#4a5568"',
        "theme: { primary: '#0ea5e9', secondary: '#a855f7' }",
    ]:
        c(t, "css_color", "hex color")

    # long identifiers
    for t in [
        "AbstractSingletonProxyFactoryBeanConfigurationManager",
        "test_reconcile_counts_when_source_has_malformed_lines_and_duplicates",
        "kDefaultMaxConcurrentStreamsPerConnectionOverride = 128",
        "NODE0_CORPUS_QUARANTINE_DIRECTORY_OVERRIDE_ENABLED=1",
        "export GT_POLECAT_MAX_IDLE_SECONDS_BEFORE_WITNESS_NUDGE=900",
        "def _compute_per_role_partition_statistics_with_recency_weighting(self):",
        "class HighEntropyStringDetectorConfigurationError(ValueError):",
        'ANTHROPIC_API_KEY_ENV_VAR_NAME = "ANTHROPIC_API_KEY"',
    ]:
        c(t, "long_identifier", "long identifier")

    # paths
    for t in [
        "/usr/local/bin/gt",
        "sudo vim /etc/nginx/sites-available/gt.conf",
        "/opt/gastown/releases/0.4.0/bin",
        "/var/lib/docker/overlay2",
        "Home directories live under /home/ on most Linux systems.",
        "chmod 700 /home/* is not a good idea",
        "cd /home/$USER/gt",
        "cp config.toml ~/.config/gt/",
        "$HOME/.claude/settings.json",
        "Put your checkout in /home/<you>/gt.",
        "corpus/readers/beads.py:42",
        "./tests/corpus/fixtures/sample.jsonl",
        "src/main/java/com/acme/gt/App.java",
        "/srv/www/htdocs",
        "/root/.cache/pip is on the small volume",
        "C:\\Program Files\\Git\\bin\\bash.exe",
        "/tmp/pytest-of-runner/pytest-3/test_build0",
        "/proc/self/status",
    ]:
        c(t, "path", "non-personal path")

    # public key material
    c(
        f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{mixed(B64, 43)} deploy-key",
        "public_key",
        "SSH public key",
    )
    c(
        "-----BEGIN CERTIFICATE-----\n" + "\n".join(pem_body(6)) + "\n-----END CERTIFICATE-----",
        "public_key",
        "X.509 certificate",
    )
    c(
        f"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE{mixed(B64, 28)}\n{mixed(B64, 24)}==\n-----END PUBLIC KEY-----",
        "public_key",
        "public key",
    )
    c(
        f"The ECDSA key fingerprint is SHA256:{mixed(B64, 43)}.",
        "public_key",
        "host key fingerprint",
    )
    c(f"gpg: using RSA key {hexs(40).upper()}", "public_key", "GPG fingerprint")
    c(f"age1{rs('qpzry9x8gf2tvdw0s3jn54khce6mua7l', 58)}", "public_key", "age recipient (public)")

    # URLs without secrets
    for t in [
        "postgres://app@db.example.com:5432/gt_prod",
        "DATABASE_URL=postgres://app:${DB_PASSWORD}@db:5432/gt",
        "https://github.com/gastown/gt/pull/412#discussion_r1543",
        "redis://cache:6379/0",
        "https://user:<password>@host/path",
        "https://docs.anthropic.com/en/api/getting-started",
        "https://api.stripe.com/v1/charges?limit=3",
        "http://localhost:5432",
        "https://pypi.org/simple/gt-tools/",
        "mongodb://localhost:27017/test",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    ]:
        c(t, "url_no_secret", "URL without a credential")

    # vendor object ids (not credentials)
    c(f"cus_{mixed(B62, 14)}", "vendor_id", "Stripe customer id")
    c(
        f'{{"id": "pi_3{mixed(B62, 23)}", "object": "payment_intent", "status": "succeeded"}}',
        "vendor_id",
        "Stripe payment intent id",
    )
    c(f"evt_1{mixed(B62, 23)} charge.refunded", "vendor_id", "Stripe event id")
    c(
        f'{{"id": "msg_01{mixed(B62, 22)}", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514"}}',
        "vendor_id",
        "Anthropic message id",
    )
    c(
        f'{{"type": "tool_use", "id": "toolu_01{mixed(B62, 22)}", "name": "Bash", "input": {{"command": "bd ready"}}}}',
        "vendor_id",
        "Anthropic tool_use id",
    )
    c(f"request-id: req_011C{mixed(B62, 20)}", "vendor_id", "Anthropic request id")
    c(
        f'{{"id": "chatcmpl-{mixed(B62, 29)}", "object": "chat.completion"}}',
        "vendor_id",
        "OpenAI completion id",
    )
    c(f'assistant_id = "asst_{mixed(B62, 24)}"', "vendor_id", "OpenAI assistant id")
    c(f"OpenAI-Organization: org-{mixed(B62, 24)}", "vendor_id", "OpenAI org id")
    c("arn:aws:iam::123456789012:role/gt-deployer", "vendor_id", "AWS ARN (doc account id)")
    c(
        f"aws ec2 describe-instances --instance-ids i-0{hexs(16)} --region us-east-1",
        "vendor_id",
        "EC2 instance id",
    )
    c(f"ami-0{hexs(16)} sg-0{hexs(16)} vpc-0{hexs(16)}", "vendor_id", "AWS resource ids")
    c("slack channel C04QW7E2ZKM, user U02ABCDE123", "vendor_id", "Slack ids")
    c(f"web-{rs(HEX, 9)}-{rs(LO + DIG, 5)}   1/1   Running   0   3d", "vendor_id", "k8s pod name")
    c(
        f"run https://github.com/gastown/gt/actions/runs/{rs(DIG, 10)}/job/{rs(DIG, 11)}",
        "vendor_id",
        "actions run",
    )
    c(f"Sentry event {hexs(32)} captured", "vendor_id", "Sentry event id")
    c(f"Idempotency-Key: {uid()}", "vendor_id", "idempotency key header (uuid)")
    c(f'cache_key = "sha256:{hexs(64)}"', "sha256", "cache key is a digest, not a credential")
    c(
        'usage: {"input_tokens": 1523, "output_tokens": 412}, max_tokens=4096',
        "word_lookalike",
        "token counts",
    )

    # word look-alikes for prefixes
    for t in [
        "from sklearn.linear_model import Ridge  # sk-learn",
        "task-ant-api03 is the third ant API task",
        "risk_live_updates = True",
        "ask_test_runner()",
        "The AKIA prefix marks long-term IAM keys.",
        "xoxo, the mayor",
        "ghp-pages branch",
        "desk-proj-alpha-planning.md",
        "eyJ is what base64 JSON objects start with",
        "glpat is GitLab's token prefix",
    ]:
        c(t, "word_lookalike", "prefix-like words")

    # password-related clean
    for t in [
        "password: ${DB_PASSWORD}",
        "PASSWORD=",
        "password_min_length: 12",
        'pw = getpass.getpass("Password: ")',
        'echo "$CR_PAT" | docker login ghcr.io -u USERNAME --password-stdin',
        'password = os.environ["DB_PASSWORD"]',
        '"password": "<your password>"',
        "Forgot password? Reset it from the settings page.",
        "passwordless sudo is configured for the ci user",
    ]:
        c(t, "password_ref", "no password value")

    # realistic Gas Town text without secrets
    for t in [
        bead(
            "Add quarantine report", "Every quarantined example must carry file, line and reason."
        ),
        transcript(
            "assistant",
            "Ran `bd ready` — 3 beads ready: gt-4f2a, gt-9k1m, gt-x7p2. Slinging gt-4f2a to polecat-3.",
        ),
        transcript("tool", "===== 42 passed, 1 skipped in 3.21s ====="),
        'gt convoy create "corpus v1" gt-4f2a gt-9k1m --notify mayor',
        '[formula]\nname = "release"\nsteps = ["build", "test", "tag"]',
        f"{ts()} INFO witness: polecat-7 idle 300s, nudging",
        'time=2024-05-02T10:00:00Z level=info msg="merged" mr=412 sha=3f2a9c1',
        "TOTAL  1523  87  94%",
        "epoch 3/10 loss=1.2345 lr=3.0e-04 tok/s=12,345",
        "| rig | polecats | beads |\n|-----|---------|-------|\n| gastown | 4 | 17 |",
    ]:
        c(t, "prose", "ordinary artifact text")


gen_secrets()
gen_clean()

if __name__ == "__main__":
    out = Path(__file__).with_name("heldout_secrets.jsonl")
    with out.open("w") as f:
        for rec in OUT:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    n_s = sum(r["label"] == "secret" for r in OUT)
    print(f"wrote {len(OUT)} snippets: {n_s} secret, {len(OUT) - n_s} clean -> {out}")
