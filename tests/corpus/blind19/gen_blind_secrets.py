# ruff: noqa: E501  (data generator: long literal snippets are the point)
"""Generator for the issue-19 blind secret set (blind_secrets.jsonl).

Written blind: before reading the scrubber code under corpus/scrub/ in depth (only the
public `Scrubber().scrub(text)` interface and the held-out set's scoring were looked at).
Every secret value is synthetic (random characters from a fixed seed in the documented shape
of its format); none is a real credential. Rerunning this script reproduces the jsonl byte
for byte.

Each base snippet is placed in the contexts where it occurs in a Gas Town rig:
  * ``bash_call``   -- a Claude Code log line (JSON) whose Bash ``tool_use`` input holds it
                       (so the snippet is JSON-escaped: quotes as \\", newlines as \\n);
  * ``bash_result`` -- a Claude Code ``tool_result`` line (JSON-escaped) with it as output;
  * ``transcript``  -- a plain transcript turn ("assistant: ...");
  * ``bead``        -- a bead line from .beads/issues.jsonl (JSON-escaped description);
  * ``yaml``        -- indented under a key of a YAML block.

Labeling policy (issue 19):
  * secrets: credentials given by context (password flags, netrc/pgpass/ini/yaml/toml/json
    keys, env dumps, Authorization headers of any scheme, URL userinfo and token/sig/key/
    secret/access_token query parameters, prose "the password is ..."); vendor formats
    (Kubernetes bootstrap tokens, Mailgun, Twilio, AWS session tokens and many others);
    phone numbers; Luhn-valid card numbers in issuer ranges; public IPv4 addresses.
  * look-alikes (must be kept unaltered, and not quarantined): private and loopback IPs,
    SRI hashes, ${VAR} references, digests, full and short git SHAs, UUIDs, version numbers,
    placeholders, order ids and timestamps, md5 sums, flags that look like password flags
    (`docker run -p 8080:80`, `ssh -p 2222`, `mkdir -p`, `mysql -p` with a prompt), prose
    that talks about passwords without giving one.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

R = random.Random(19190019)
UP = string.ascii_uppercase
LO = string.ascii_lowercase
DIG = string.digits
B62 = UP + LO + DIG
B64 = B62 + "+/"
B64URL = B62 + "-_"
HEX = "0123456789abcdef"
LODIG = LO + DIG

OUT: list[dict] = []


def rs(alpha: str, n: int) -> str:
    return "".join(R.choice(alpha) for _ in range(n))


def mixed(alpha: str, n: int) -> str:
    while True:
        s = rs(alpha, n)
        need = [a for a in (UP, LO, DIG) if set(a) & set(alpha)]
        if all(set(s) & set(a) for a in need):
            return s


def password() -> str:
    """A human-chosen-looking but random password (no quotes/backslashes)."""
    words = ["Staging", "Winter", "Orca", "Falcon", "Copper", "Maple", "Quartz", "Ridge"]
    style = R.randrange(3)
    if style == 0:
        return R.choice(words) + rs(DIG, 3) + R.choice("!#%&*@") + rs(LO, 2)
    if style == 1:
        return mixed(B62, R.randrange(12, 20))
    return mixed(B62 + "!#%^*-_", R.randrange(14, 24))


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card(prefix: str, length: int) -> str:
    body = prefix + rs(DIG, length - len(prefix) - 1)
    for c in DIG:
        if luhn_ok(body + c):
            return body + c
    raise AssertionError


def not_luhn(prefix: str, length: int) -> str:
    while True:
        s = prefix + rs(DIG, length - len(prefix))
        if not luhn_ok(s):
            return s


# ---- contexts ------------------------------------------------------------------------------

CTX_CALL = ("bash_call",)
CTX_OUT = ("bash_result", "transcript", "bead", "yaml")
CTX_PROSE = ("transcript", "bead")
CTX_ALL = ("bash_call", "bash_result", "transcript", "bead", "yaml")


def in_context(ctx: str, snippet: str) -> str:
    sid = rs(HEX, 8)
    if ctx == "bash_call":
        return json.dumps(
            {
                "type": "assistant",
                "sessionId": sid,
                "message": {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "toolu_" + rs(B62, 20),
                            "name": "Bash",
                            "input": {"command": snippet, "description": "Run the command"},
                        }
                    ],
                },
            }
        )
    if ctx == "bash_result":
        return json.dumps(
            {
                "type": "user",
                "sessionId": sid,
                "message": {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_" + rs(B62, 20),
                            "content": snippet,
                            "is_error": False,
                        }
                    ],
                },
            }
        )
    if ctx == "transcript":
        return f"assistant: Here is what I found.\n{snippet}\nI will continue with the bead."
    if ctx == "bead":
        return json.dumps(
            {
                "id": f"gt-{R.randrange(100, 999)}",
                "title": "Fix the deploy script",
                "status": "open",
                "description": f"Context from the session:\n{snippet}\nPlease follow up.",
            }
        )
    if ctx == "yaml":
        body = "\n".join("      " + line for line in snippet.splitlines())
        return f"job:\n  name: deploy\n  notes: |\n{body}\n  retries: 3"
    raise ValueError(ctx)


def add(label: str, kind: str, note: str, snippet: str, secrets: list[str], contexts) -> None:
    for ctx in contexts:
        rec = {
            "label": label,
            "kind": kind,
            "context": ctx,
            "note": note,
            "text": in_context(ctx, snippet),
        }
        if label == "secret":
            rec["secrets"] = secrets
            for s in secrets:
                assert s in rec["text"], (kind, ctx, s)
        OUT.append(rec)


def secret(kind, note, snippet, secrets, contexts=CTX_ALL):
    add("secret", kind, note, snippet, secrets, contexts)


def clean(kind, note, snippet, contexts=CTX_ALL):
    add("clean", kind, note, snippet, [], contexts)


def one(seq):
    return R.choice(seq)


# ---- credentials by context ----------------------------------------------------------------

for _ in range(2):
    p = password()
    secret(
        "mysql_p_quoted",
        "mysql -p'...'",
        f"mysql -u app -p'{p}' -h db.internal shop -e 'select 1'",
        [p],
    )
    p = mixed(B62, 14)
    secret("mysql_p_attached", "mysql -pVALUE", f"mysql -uroot -p{p} orders < dump.sql", [p])
    p = password()
    secret(
        "password_flag_eq",
        "--password=",
        f"mysqldump --user=backup --password={p} shop > shop.sql",
        [p],
    )
    p = password()
    secret(
        "password_flag_space",
        "--password VALUE",
        f"redis-cli --user admin --password '{p}' ping",
        [p],
    )
    p = password()
    secret(
        "sshpass", "sshpass -p", f"sshpass -p '{p}' ssh deploy@build01 'systemctl restart app'", [p]
    )
    p = password()
    secret(
        "pgpassword_env", "PGPASSWORD=", f"PGPASSWORD='{p}' psql -h db -U app -c 'select 1'", [p]
    )

for _ in range(2):
    p = password()
    secret(
        "netrc",
        ".netrc password",
        f"$ cat ~/.netrc\nmachine git.internal.corp\n  login deploy\n  password {p}",
        [p],
        CTX_OUT,
    )
    p = password()
    secret(
        "netrc_oneline",
        ".netrc one line",
        f"machine api.heroku.com login ops@corp.io password {p}",
        [p],
        CTX_OUT,
    )
    p = mixed(B62, 16)
    secret(
        "pgpass", ".pgpass line", f"$ cat ~/.pgpass\ndb.internal:5432:orders:app:{p}", [p], CTX_OUT
    )
    p = password()
    secret(
        "ini_password",
        "ini [client] password",
        f"[client]\nuser = app\npassword = {p}\nhost = db",
        [p],
        CTX_OUT,
    )
    p = password()
    secret(
        "yaml_password",
        "yaml db password",
        f"database:\n  host: db\n  user: app\n  password: {p}",
        [p],
        CTX_OUT,
    )
    p = mixed(B62, 24)
    secret(
        "toml_secret",
        "toml secret",
        f'[auth]\nclient_id = "gastown"\nclient_secret = "{p}"',
        [p],
        CTX_OUT,
    )
    p = mixed(B62 + "-_", 32)
    secret(
        "json_secret",
        "json key",
        f'{{"service": "mailer", "api_secret": "{p}", "timeout": 30}}',
        [p],
        CTX_OUT,
    )
    p = password()
    secret(
        "env_dump",
        "env dump",
        f"$ env | sort\nHOME=/root\nDB_PASSWORD={p}\nPATH=/usr/bin:/bin\nTERM=xterm",
        [p],
        CTX_OUT,
    )
    p = mixed(B62, 30)
    secret(
        "env_dump_token",
        "env dump token",
        f"SHELL=/bin/bash\nDEPLOY_TOKEN={p}\nLANG=C.UTF-8",
        [p],
        CTX_OUT,
    )

for _ in range(2):
    t = mixed(B62, 40)
    secret(
        "auth_bearer",
        "Bearer opaque",
        f"curl -H 'Authorization: Bearer {t}' https://api.internal.corp/v1/jobs",
        [t],
    )
    t = base64.b64encode(f"deploy:{password()}".encode()).decode()
    secret(
        "auth_basic", "Basic", f'curl -H "Authorization: Basic {t}" https://registry.corp/v2/', [t]
    )
    t = mixed(HEX, 40)
    secret(
        "auth_token_scheme",
        "Token scheme",
        f"> GET /api/v2/builds HTTP/1.1\n> Authorization: Token {t}\n< HTTP/1.1 200 OK",
        [t],
        CTX_OUT,
    )
    t = mixed(B62, 32)
    secret(
        "auth_custom_scheme",
        "ApiKey scheme",
        f"authorization: ApiKey {t}\ncontent-type: application/json",
        [t],
        CTX_OUT,
    )
    t = mixed(B62, 36)
    secret(
        "auth_header_json",
        "headers json",
        f'{{"headers": {{"Authorization": "Bearer {t}", "Accept": "*/*"}}}}',
        [t],
        CTX_OUT,
    )

for _ in range(2):
    p = password().replace("@", "").replace("#", "").replace("%", "")
    secret(
        "url_userinfo",
        "db url userinfo",
        f"DATABASE_URL=postgres://app:{p}@db.internal:5432/orders",
        [p],
    )
    t = mixed(B62, 32)
    secret(
        "url_userinfo_token",
        "https token userinfo",
        f"git clone https://x-access-token:{t}@git.corp.io/rig/gastown.git",
        [t],
    )
    t = mixed(B62, 32)
    secret(
        "url_query_token", "?token=", f"curl 'https://hooks.corp.io/deploy?token={t}&env=prod'", [t]
    )
    t = mixed(B64URL, 43)
    secret(
        "url_query_sig",
        "&sig=",
        f"GET https://store.blob.core.windows.net/c/report.csv?sv=2022-11-02&se=2026-12-31&sig={t}",
        [t],
        CTX_OUT,
    )
    t = mixed(B62, 39)
    secret(
        "url_query_key",
        "?key=",
        f"wget 'https://maps.corp.io/api/geocode?address=depot&key={t}'",
        [t],
    )
    t = mixed(B62, 28)
    secret(
        "url_query_secret",
        "?secret=",
        f"POST https://ci.corp.io/hook?secret={t} -> 204",
        [t],
        CTX_OUT,
    )
    t = mixed(B64URL, 48)
    secret(
        "url_query_access_token",
        "?access_token=",
        f"https://graph.corp.io/me?fields=id&access_token={t}",
        [t],
    )

for _ in range(2):
    p = password()
    secret(
        "prose_password",
        "the password is",
        f"The staging DB password is {p} until we rotate it.",
        [p],
        CTX_PROSE,
    )
    p = password()
    secret(
        "prose_password_colon",
        "password: in prose",
        f"Use these for the test box. user: admin, password: {p}",
        [p],
        CTX_PROSE,
    )
    t = mixed(B62, 28)
    secret(
        "prose_token",
        "token: in prose",
        f"Got it from the ops channel, token: {t} (expires Friday)",
        [t],
        CTX_PROSE,
    )
    p = password()
    secret(
        "prose_passphrase",
        "passphrase is",
        f"the key's passphrase is '{p}', do not commit it",
        [p],
        CTX_PROSE,
    )

# ---- vendor formats -------------------------------------------------------------------------

for _ in range(3):
    t = rs(LODIG, 6) + "." + rs(LODIG, 16)
    secret(
        "k8s_bootstrap_token",
        "kubeadm join --token",
        f"kubeadm join 10.0.0.10:6443 --token {t} --discovery-token-ca-cert-hash sha256:{rs(HEX, 64)}",
        [t],
    )
tid, tsec = rs(LODIG, 6), rs(LODIG, 16)
secret(
    "k8s_bootstrap_token",
    "bootstrap secret yaml",
    f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{tid}\nstringData:\n  token-id: {tid}\n  token-secret: {tsec}",
    [tsec],
    CTX_OUT,
)

for _ in range(3):
    t = "key-" + rs(HEX, 32)
    secret(
        "mailgun_key",
        "Mailgun key-",
        f"curl -s --user 'api:{t}' https://api.mailgun.net/v3/mg.corp.io/messages",
        [t],
    )
t = "key-" + rs(HEX, 32)
secret(
    "mailgun_key",
    "Mailgun in config",
    f"mailgun:\n  domain: mg.corp.io\n  api_key: {t}",
    [t],
    CTX_OUT,
)

for _ in range(3):
    sid, tok = "AC" + rs(HEX, 32), rs(HEX, 32)
    secret(
        "twilio_auth_token",
        "Twilio auth token",
        f"export TWILIO_ACCOUNT_SID={sid}\nexport TWILIO_AUTH_TOKEN={tok}",
        [tok],
    )
sid, tok = "AC" + rs(HEX, 32), rs(HEX, 32)
secret(
    "twilio_auth_token",
    "Twilio basic auth",
    f"curl -X POST https://api.twilio.com/2010-04-01/Accounts/{sid}/Messages.json -u {sid}:{tok}",
    [tok],
    CTX_CALL,
)
k = "SK" + rs(HEX, 32)
secret("twilio_api_key", "Twilio API key SK", f"twilio api:core:messages:list --api-key {k}", [k])

for _ in range(3):
    st = "IQoJb3JpZ2luX2VjE" + rs(B64, 300) + "=="
    secret(
        "aws_session_token",
        "AWS_SESSION_TOKEN",
        f"export AWS_ACCESS_KEY_ID=ASIA{rs(UP + DIG, 16)}\nexport AWS_SESSION_TOKEN={st}",
        [st],
    )
st = "FwoGZXIvYXdzE" + rs(B64, 280)
secret(
    "aws_session_token",
    "aws credentials file",
    f"[default]\naws_session_token = {st}\nregion = eu-west-1",
    [st],
    CTX_OUT,
)
st = "IQoJb3JpZ2luX2VjE" + rs(B64, 320)
secret(
    "aws_session_token",
    "sts json",
    f'{{"Credentials": {{"SessionToken": "{st}", "Expiration": "2026-12-07T03:00:00Z"}}}}',
    [st],
    CTX_OUT,
)

VENDOR = [
    (
        "gitlab_pat",
        lambda: "glpat-" + mixed(B62 + "-_", 20),
        "git push https://oauth2:{t}@gitlab.corp.io/rig.git",
    ),
    (
        "npm_token",
        lambda: "npm_" + mixed(B62, 36),
        "echo '//registry.npmjs.org/:_authToken={t}' >> ~/.npmrc",
    ),
    (
        "pypi_token",
        lambda: "pypi-AgEIcHlwaS5vcmc" + rs(B64URL, 70),
        "twine upload -u __token__ -p {t} dist/*",
    ),
    (
        "sendgrid_key",
        lambda: "SG." + rs(B64URL, 22) + "." + rs(B64URL, 43),
        "SENDGRID_API_KEY={t} ./notify.sh",
    ),
    (
        "shopify_token",
        lambda: "shpat_" + rs(HEX, 32),
        "curl -H 'X-Shopify-Access-Token: {t}' https://shop.myshopify.com/admin/api/2024-01/orders.json",
    ),
    ("digitalocean_pat", lambda: "dop_v1_" + rs(HEX, 64), "doctl auth init -t {t}"),
    ("stripe_restricted", lambda: "rk_live_" + mixed(B62, 99), "stripe --api-key {t} charges list"),
    (
        "slack_app_token",
        lambda: "xapp-1-A" + rs(UP + DIG, 10) + "-" + rs(DIG, 13) + "-" + rs(HEX, 64),
        "SLACK_APP_TOKEN={t} node bot.js",
    ),
    (
        "telegram_bot_token",
        lambda: str(R.randrange(10**8, 10**10)) + ":AA" + rs(B64URL, 33),
        "curl https://api.telegram.org/bot{t}/getMe",
    ),
    (
        "google_oauth_access",
        lambda: "ya29.a0" + rs(B64URL, 150),
        "curl -H 'Authorization: Bearer {t}' https://www.googleapis.com/drive/v3/files",
    ),
    (
        "google_client_secret",
        lambda: "GOCSPX-" + rs(B64URL, 28),
        "gcloud auth application-default login --client-secret={t}",
    ),
    (
        "vault_token",
        lambda: "hvs." + mixed(B62 + "_-", 90),
        "VAULT_TOKEN={t} vault kv get secret/app",
    ),
    ("doppler_token", lambda: "dp.st.prd." + rs(B62, 40), "doppler run --token {t} -- ./app"),
    ("linear_key", lambda: "lin_api_" + rs(B62, 40), "LINEAR_API_KEY={t} gt sync"),
    ("databricks_token", lambda: "dapi" + rs(HEX, 32), "databricks configure --token {t}"),
    ("newrelic_key", lambda: "NRAK-" + rs(UP + DIG, 27), "NEW_RELIC_API_KEY={t} ./report"),
    (
        "age_secret_key",
        lambda: "AGE-SECRET-KEY-1" + rs("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58),
        "echo '{t}' > key.txt && sops -d secrets.enc.yaml",
    ),
    (
        "grafana_sa_token",
        lambda: "glsa_" + rs(B62, 32) + "_" + rs(HEX, 8),
        "curl -H 'Authorization: Bearer {t}' https://grafana.corp.io/api/dashboards",
    ),
    ("hf_token", lambda: "hf_" + mixed(B62, 34), "huggingface-cli login --token {t}"),
    (
        "openai_project_key",
        lambda: "sk-proj-" + rs(B64URL, 74) + "T3BlbkFJ" + rs(B64URL, 74),
        "OPENAI_API_KEY={t} python agent.py",
    ),
    (
        "anthropic_admin_key",
        lambda: "sk-ant-admin01-" + rs(B64URL, 93) + "AA",
        "curl https://api.anthropic.com/v1/organizations/users -H 'x-api-key: {t}'",
    ),
    (
        "postman_key",
        lambda: "PMAK-" + rs(HEX, 24) + "-" + rs(HEX, 34),
        "newman run coll.json --postman-api-key {t}",
    ),
    (
        "atlassian_token",
        lambda: "ATATT3xFfGF0" + rs(B64URL, 170) + "=" + rs(HEX, 8).upper(),
        "curl -u me@corp.io:{t} https://corp.atlassian.net/rest/api/3/myself",
    ),
    ("flyio_token", lambda: "fo1_" + rs(B64URL, 43), "FLY_API_TOKEN={t} flyctl deploy"),
    ("pulumi_token", lambda: "pul-" + rs(HEX, 40), "PULUMI_ACCESS_TOKEN={t} pulumi up"),
    (
        "terraform_token",
        lambda: rs(B62, 14) + ".atlasv1." + rs(B62, 67),
        "TF_TOKEN_app_terraform_io={t} terraform init",
    ),
    (
        "planetscale_pw",
        lambda: "pscale_pw_" + rs(B64URL, 43),
        "mysql -h aws.connect.psdb.cloud -u app --password={t}",
    ),
    (
        "mapbox_secret",
        lambda: "sk.eyJ1Ijoi" + rs(B64URL, 50) + "." + rs(B64URL, 22),
        "MAPBOX_TOKEN={t} npm run tiles",
    ),
    ("alibaba_key", lambda: "LTAI" + rs(B62, 20), "aliyun configure set --access-key-id {t}"),
    (
        "square_token",
        lambda: "EAAA" + rs(B64URL, 60),
        "curl -H 'Authorization: Bearer {t}' https://connect.squareup.com/v2/locations",
    ),
    (
        "discord_bot_token",
        lambda: "M" + rs(B62, 23) + "." + rs(B64URL, 6) + "." + rs(B64URL, 38),
        "DISCORD_TOKEN={t} node bot.js",
    ),
    ("datadog_api_key", lambda: rs(HEX, 32), "DD_API_KEY={t} datadog-agent start"),
    ("heroku_key", lambda: "HRKU-" + rs(B64URL, 60), "HEROKU_API_KEY={t} heroku apps"),
    (
        "sentry_auth_token",
        lambda: "sntrys_" + rs(B64URL, 100),
        "sentry-cli --auth-token {t} releases new 1.2.3",
    ),
    (
        "github_fine_grained",
        lambda: "github_pat_11" + rs(UP + DIG, 20) + "_" + rs(B62, 59),
        "gh auth login --with-token <<< {t}",
    ),
    (
        "gcp_sa_private_key_id",
        lambda: rs(HEX, 40),
        '{{"type": "service_account", "private_key_id": "{t}", "client_email": "ci@proj.iam.gserviceaccount.com"}}',
    ),
]
for kind, mk, tmpl in VENDOR:
    for ctxs in (("bash_call", "transcript"), ("bash_result", "bead", "yaml")):
        t = mk()
        secret(kind, kind, tmpl.format(t=t), [t], ctxs)

# ---- personal data ---------------------------------------------------------------------------

PHONES = [
    ("+1 415 867 5309", "US international spaces"),
    ("(212) 736-5001", "US parens"),
    ("646.555.2874".replace("555", "829"), "US dots"),
    ("+14158675309", "E.164"),
    ("+44 20 7946 0958", "UK London"),
    ("+44 7700 900983", "UK mobile"),
    ("+49 30 90182033", "DE Berlin"),
    ("+33 1 42 68 53 00", "FR Paris"),
    ("+61 2 9374 4000", "AU Sydney"),
    ("+81 3-3224-9999", "JP Tokyo"),
    ("+91 98450 12345", "IN mobile"),
    ("+31 20 624 1111", "NL Amsterdam"),
    ("415-867-5309", "US dashes"),
    ("+1-303-555-0199".replace("555-0199", "499-7111"), "US dashes intl"),
]
PHONE_TMPL = [
    ("Call the on-call engineer at {p} if the deploy fails.", CTX_PROSE),
    ("contact:\n  name: on-call\n  phone: {p}", ("bash_result", "yaml")),
    ("$ gt mail send --to mayor 'customer asked for a call back on {p}'", ("bash_call",)),
]
for i, (num, note) in enumerate(PHONES):
    tmpl, ctxs = PHONE_TMPL[i % len(PHONE_TMPL)]
    secret("phone_number", note, tmpl.format(p=num), [num], ctxs)
secret(
    "phone_number",
    "tel: link",
    '<a href="tel:+14158675309">support</a>',
    ["+14158675309"],
    ("bash_result", "transcript"),
)

CARDS = [
    ("4", 16, "Visa"),
    ("51", 16, "Mastercard"),
    ("2221", 16, "Mastercard 2-series"),
    ("37", 15, "Amex"),
    ("6011", 16, "Discover"),
    ("3530", 16, "JCB"),
    ("55", 16, "Mastercard"),
]
for pre, n, note in CARDS:
    c = card(pre, n)
    spaced = " ".join(c[i : i + 4] for i in range(0, len(c), 4))
    secret(
        "payment_card",
        note + " contiguous",
        f"2026-12-06T22:14:03Z payment.charge order=ORD-{rs(DIG, 6)} card={c} amount=42.00 status=declined",
        [c],
        ("bash_result", "transcript", "yaml"),
    )
    secret(
        "payment_card",
        note + " spaced",
        f"Customer read the card out on the call: {spaced}, exp 09/28",
        [spaced],
        CTX_PROSE,
    )
    dashed = "-".join(c[i : i + 4] for i in range(0, len(c), 4))
    secret(
        "payment_card",
        note + " dashed",
        f'{{"event": "charge.failed", "pan": "{dashed}", "currency": "usd"}}',
        [dashed],
        ("bash_result", "bead"),
    )

for _ in range(2):
    ip = f"{R.choice([34, 52, 81, 141, 185])}.{R.randrange(1, 255)}.{R.randrange(1, 255)}.{R.randrange(1, 255)}"
    secret(
        "public_ipv4",
        "public IP",
        f"ssh -o StrictHostKeyChecking=no admin@{ip} 'uptime'",
        [ip],
        ("bash_call", "transcript"),
    )

# ---- look-alikes -----------------------------------------------------------------------------

for _round in range(2):
    clean(
        "private_ip",
        "RFC1918 + loopback",
        "curl http://127.0.0.1:8080/health && curl http://10.0.3.17:9000/metrics",
    )
    clean(
        "private_ip",
        "192.168 and 172.16",
        "inet 192.168.1.42/24 brd 192.168.1.255 scope global eth0\ninet 172.16.0.5/16 scope global docker0",
        CTX_OUT,
    )
    clean("private_ip", "ipv6 loopback", "listening on [::1]:5432 and 127.0.0.1:5432", CTX_OUT)
    clean("sri_hash", "package-lock integrity", f'"integrity": "sha512-{rs(B64, 86)}=="', CTX_OUT)
    clean(
        "sri_hash",
        "script integrity",
        f'<script src="/app.js" integrity="sha384-{rs(B64, 64)}" crossorigin="anonymous"></script>',
        CTX_OUT,
    )
    clean("env_ref", "${VAR} password", 'mysql -u app -p"${DB_PASSWORD}" -h db orders', CTX_CALL)
    clean(
        "env_ref",
        "$VAR token header",
        'curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user',
        CTX_CALL,
    )
    clean(
        "env_ref",
        "yaml ${VAR}",
        "database:\n  password: ${DB_PASSWORD}\n  token: ${API_TOKEN}",
        CTX_OUT,
    )
    clean(
        "env_ref",
        "PGPASSWORD from env",
        'PGPASSWORD="$(cat /run/secrets/pg)" psql -h db -U app',
        CTX_CALL,
    )
    clean(
        "env_ref",
        "template ref",
        "password: {{ .Values.db.password }}\ntoken: {{ secrets.DEPLOY_TOKEN }}",
        CTX_OUT,
    )
    clean("digest", "docker digest", f"ghcr.io/corp/gastown@sha256:{rs(HEX, 64)}", CTX_ALL)
    clean("digest", "sha256sum output", f"{rs(HEX, 64)}  dist/node0-0.4.1.tar.gz", CTX_OUT)
    clean("md5", "md5sum output", f"{rs(HEX, 32)}  build/artifact.bin", CTX_OUT)
    clean("md5", "etag", f'< ETag: "{rs(HEX, 32)}"\n< Content-Length: 1834', CTX_OUT)
    clean(
        "git_sha",
        "full sha",
        f"commit {rs(HEX, 40)}\nAuthor: Gas Town Bot <bot@example.com>\n\n    fix convoy loader",
        CTX_OUT,
    )
    clean(
        "git_sha",
        "short shas",
        f"{rs(HEX, 7)} fix mail router\n{rs(HEX, 7)} add witness patrol\n{rs(HEX, 7)} docs",
        CTX_OUT,
    )
    clean(
        "git_sha",
        "git revert short sha",
        f"git revert --no-edit {rs(HEX, 7)} && git cherry-pick {rs(HEX, 12)}",
        CTX_CALL,
    )
    clean(
        "uuid",
        "uuid",
        f"session {rs(HEX, 8)}-{rs(HEX, 4)}-4{rs(HEX, 3)}-a{rs(HEX, 3)}-{rs(HEX, 12)} resumed",
        CTX_ALL,
    )
    clean(
        "version",
        "versions",
        "Successfully installed torch-2.13.0 transformers-5.23.0 peft-0.21.2 node0-0.4.1rc2",
        CTX_OUT,
    )
    clean(
        "version",
        "semver tags",
        "git tag v2.14.0-rc.1 && npm version 10.9.2 && python 3.12.8",
        CTX_CALL,
    )
    clean("version", "windows build", "OS build 10.0.19045.3803, kernel 6.8.0-1019-aws", CTX_OUT)
    clean("placeholder", "angle placeholders", "mysql -u <user> -p'<password>' -h <host>", CTX_CALL)
    clean(
        "placeholder",
        "your_api_key_here",
        "api_key: your_api_key_here\npassword: changeme\ntoken: <TOKEN>",
        CTX_OUT,
    )
    clean(
        "placeholder",
        "redacted",
        "Authorization: Bearer ***REDACTED***\npassword: ********",
        CTX_OUT,
    )
    clean(
        "placeholder", "xxxx", "export STRIPE_SECRET_KEY=sk_live_xxxxxxxxxxxxxxxxxxxxxxxx", CTX_CALL
    )
    clean(
        "placeholder",
        "kubeadm token placeholder",
        "kubeadm join <control-plane-host>:6443 --token <token> --discovery-token-ca-cert-hash sha256:<hash>",
        CTX_CALL,
    )
    clean(
        "flag_lookalike",
        "docker -p port",
        "docker run -d -p 8080:80 -p 5432:5432 --name web nginx:1.27",
        CTX_CALL,
    )
    clean(
        "flag_lookalike",
        "ssh -p port",
        "ssh -p 2222 deploy@build01 && scp -P 2222 app.tar build01:/srv",
        CTX_CALL,
    )
    clean(
        "flag_lookalike", "mkdir -p", "mkdir -p /srv/gastown/logs && git log -p --stat -3", CTX_CALL
    )
    clean("flag_lookalike", "mysql -p prompt", "mysql -u root -p orders\nEnter password:", CTX_CALL)
    clean(
        "flag_lookalike",
        "--password-stdin",
        'echo "$CR_PAT" | docker login ghcr.io -u bot --password-stdin',
        CTX_CALL,
    )
    clean("flag_lookalike", "read -p prompt", "read -s -p 'Password: ' PASS && echo", CTX_CALL)
    clean(
        "prose_lookalike",
        "password talk",
        "The password is stored in Vault and rotated weekly; ask the mayor for access.",
        CTX_PROSE,
    )
    clean(
        "prose_lookalike",
        "token talk",
        "The token is required for the push step, so the job reads it from the environment.",
        CTX_PROSE,
    )
    clean(
        "prose_lookalike",
        "password policy",
        "Password must be at least 12 characters. token: see the ops runbook.",
        CTX_PROSE,
    )
    clean(
        "kv_lookalike",
        "mailgun-ish words",
        "Use a key-value store; key-rotation runs nightly (key-0 is the oldest).",
        CTX_PROSE,
    )
    clean(
        "kv_lookalike",
        "dotted identifiers",
        "import config.loader and call module.reload after os.path.join",
        CTX_PROSE,
    )
    clean(
        "url_lookalike",
        "query without secrets",
        "https://ci.corp.io/builds?page=2&sort=key&order=desc&branch=main",
        CTX_ALL,
    )
    clean(
        "url_lookalike",
        "token param from env",
        'curl "https://hooks.corp.io/deploy?token=${DEPLOY_TOKEN}&env=prod"',
        CTX_CALL,
    )
    for _ in range(3):
        oid = not_luhn(R.choice("4567"), 16)
        clean(
            "order_id",
            "16-digit order id (not Luhn)",
            f"order {oid} shipped; tracking 1Z{rs(UP + DIG, 16)}",
            CTX_OUT,
        )
    clean(
        "order_id",
        "order ids",
        f"ORD-2026-{rs(DIG, 6)} refunded, invoice INV-{rs(DIG, 8)}",
        CTX_ALL,
    )
    clean(
        "timestamp",
        "epoch ms/ns",
        f"ts=1765065243{rs(DIG, 3)} start_ns=1765065243{rs(DIG, 9)} dur_ms=1834",
        CTX_OUT,
    )
    clean(
        "timestamp",
        "iso timestamps",
        "2026-12-06T22:14:03.512Z INFO started; 2026-12-06 22:14:05,001 done",
        CTX_OUT,
    )
    clean(
        "number_lookalike",
        "byte counts and pids",
        "wrote 1048576000 bytes in 12.3 s (pid 48213, 85.1 MB/s)",
        CTX_OUT,
    )
    clean(
        "number_lookalike",
        "bead ids and ports",
        "closed gt-4821, gt-4822; listening on :50051 and :8443",
        CTX_ALL,
    )
    clean(
        "base64_lookalike",
        "base64 of text",
        "echo " + base64.b64encode(b"hello from the witness patrol").decode() + " | base64 -d",
        CTX_CALL,
    )

if __name__ == "__main__":
    out = Path(__file__).with_name("blind_secrets.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in OUT), encoding="utf-8")
    n_secret = sum(r["label"] == "secret" for r in OUT)
    kinds = {r["kind"] for r in OUT if r["label"] == "secret"}
    lk = {r["kind"] for r in OUT if r["label"] == "clean"}
    print(
        f"{len(OUT)} snippets: {n_secret} secret of {len(kinds)} kinds, {len(OUT) - n_secret} look-alike of {len(lk)} kinds"
    )
