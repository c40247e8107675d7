"""Personal data: e-mail addresses, IPv4/IPv6 addresses, personal home directories.

Phone and payment card numbers are :mod:`corpus.scrub.numbers`. Non-personal look-alikes are
kept: loopback/unspecified/documentation addresses, private addresses (by default), netmasks,
version strings, ``git@github.com``-style service addresses, example domains, generic
account names in paths (``/home/user``, ``/home/runner``).
"""

from __future__ import annotations

import ipaddress
import re

from corpus.scrub.findings import Finding

_EMAIL = re.compile(
    r"(?<![\w.+\-])(?P<local>[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63})(?:@|%40)"
    r"(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})\b"
)
_SERVICE_LOCALS = {"git", "noreply", "no-reply", "donotreply", "do-not-reply", "mailer-daemon"}
_EXAMPLE_DOMAINS = re.compile(
    r"(?i)(?:^|\.)(?:example\.(?:com|org|net)|example|test|invalid|"
    r"localhost|local|users\.noreply\.github\.com)$"
)
_FILE_TLDS = {
    "py",
    "js",
    "ts",
    "go",
    "rs",
    "md",
    "txt",
    "json",
    "toml",
    "yaml",
    "yml",
    "lock",
    "sh",
    "git",
    "png",
    "jpg",
    "svg",
    "css",
    "html",
    "whl",
    "gz",
    "zip",
    "tar",
}

_IPV4 = re.compile(r"(?<![\w.\-])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:){2,7}(?::|[0-9A-Fa-f]{1,4})(?![\w:])"
    r"|(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:){6}(?:\d{1,3}\.){3}\d{1,3}"
)
_VERSION_CONTEXT = re.compile(
    r"(?i)\b(?:version|ver|release|v|build|firmware)[\s:=]*$|==$|[A-Za-z]/$"
)
# Words that say "this is a host": an address with small octets counts as one only then.
_IP_CONTEXT = re.compile(
    r"(?i)(?:@|//|\b(?:ip|ips|host|hosts|addr|address|server|resolver|nameserver|node|peer|inet"
    r"|listen|connect(?:ing|ed)? to|connect|ssh|ping|curl|from|at|via|gateway|dns|proxy"
    r"|allowed_hosts)\b)[\s:=\[\"']*$"
)
_NETMASK_OCTETS = {"0", "128", "192", "224", "240", "248", "252", "254", "255"}

_HOME = re.compile(
    r"(?P<path>(?:/home|/Users)/(?P<user>[A-Za-z0-9._\-]{1,64})|"
    r"(?<![\w/~.\-])~(?P<tuser>[a-z_][a-z0-9_.\-]{0,31})(?=/)|"  # ~alice/…
    r"[A-Za-z]:\\\\?Users\\\\?(?P<wuser>[A-Za-z0-9._\- ]{1,64}?))(?=[/\\\s\"'`:]|$)"
)
_GENERIC_USERS = {
    "user",
    "username",
    "you",
    "yourname",
    "your_user",
    "me",
    "runner",
    "ubuntu",
    "ec2-user",
    "vagrant",
    "jovyan",
    "node",
    "app",
    "public",
    "shared",
    "default",
    "admin",
    "guest",
    "nobody",
    "all users",
    "default user",
    "<user>",
    "$user",
    "linuxbrew",
}


_CIDR_SUFFIX = re.compile(r"/(\d{1,2})(?!\d)")


def _is_network(addr: str, prefix: int) -> bool:
    """A network address with its prefix (host bits all zero, prefix < 32)."""
    if not 0 < prefix < 32:
        return False
    try:
        ipaddress.IPv4Network(f"{addr}/{prefix}", strict=True)
    except ValueError:
        return False
    return True


def _ip_is_personal(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, keep_private: bool = True
) -> bool:
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
        return False
    if keep_private and (addr.is_private or addr.is_link_local):
        return False  # RFC 1918 / ULA / link-local: the same addresses in every network
    if isinstance(addr, ipaddress.IPv4Address):
        return not any(addr in net for net in _DOC_V4)
    return addr not in _DOC_V6


_DOC_V4 = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "255.255.255.255/32")
)
_DOC_V6 = ipaddress.ip_network("2001:db8::/32")


def scan_pii(text: str, *, keep_private_ips: bool = True) -> list[Finding]:
    """All personal-data findings (sure).

    ``keep_private_ips`` keeps private, link-local and unique-local addresses (issue 19: they
    name no one and recur in every network); False scrubs them like public ones (the policy
    the labeled and the first held-out set were written under).
    """
    found: list[Finding] = []
    if "@" in text or "%40" in text:
        for m in _EMAIL.finditer(text):
            local, domain = m.group("local").lower(), m.group("domain").lower()
            if local in _SERVICE_LOCALS or _EXAMPLE_DOMAINS.search(domain):
                continue
            if domain.rsplit(".", 1)[-1] in _FILE_TLDS:
                continue  # "name@1x.png", "pkg@latest.tgz" style strings
            found.append(Finding(m.start(), m.end(), "email", "PII", "sure", "pii:email"))
    seen_ip = False
    for m in _IPV4.finditer(text):
        octets = m.group().split(".")
        if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
            continue
        if octets[0] == "255" and all(o in _NETMASK_OCTETS for o in octets):
            continue
        before = text[max(0, m.start() - 16) : m.start()]
        if _VERSION_CONTEXT.search(before):
            continue
        after = text[m.end() : m.end() + 1]
        cidr = _CIDR_SUFFIX.match(text, m.end())
        if cidr and _is_network(m.group(), int(cidr.group(1))):
            continue  # "10.96.0.0/12": a network range, not a host
        if (
            max(int(o) for o in octets) < 32
            and after not in (":", "/")
            and octets[0] != "10"  # 10.0.0.7: a private host address, not a version
            and not seen_ip  # a list of addresses: "91.198.174.192, 10.0.0.7"
            and not _IP_CONTEXT.search(before)
        ):
            continue  # "1.2.3.4", "section 3.2.1.4": version-like unless the context says host
        if _ip_is_personal(ipaddress.IPv4Address(m.group()), keep_private_ips):
            seen_ip = True
            found.append(Finding(m.start(), m.end(), "ipv4", "PII", "sure", "pii:ipv4"))
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            try:
                addr = ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            groups = [g for g in m.group().split(":") if g]
            if len(groups) < 3 and not m.group().lower().startswith(("fe80", "fd", "fc", "2")):
                continue  # "dead::beef", "a::b": too short to be an address worth scrubbing
            if _ip_is_personal(addr, keep_private_ips):
                found.append(Finding(m.start(), m.end(), "ipv6", "PII", "sure", "pii:ipv6"))
    if "/home/" in text or "/Users/" in text or "Users\\" in text or "~" in text:
        for m in _HOME.finditer(text):
            user = (m.group("user") or m.group("wuser") or m.group("tuser") or "").lower()
            if user in _GENERIC_USERS or user.startswith(("$", "<", "{")):
                continue
            found.append(
                Finding(m.start("path"), m.end("path"), "home_dir", "PII", "sure", "pii:home_dir")
            )
    return found
