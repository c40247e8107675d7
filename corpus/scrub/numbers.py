"""Personal numbers: phone numbers (the ``phonenumbers`` library) and payment card numbers.

Phones: a cheap regex proposes digit groups written the way people write phone numbers
(``+44 20 7946 0958``, ``(212) 736-5001``, ``415.867.5309``, ``+14158675309``, ``tel:…``);
Google's libphonenumber metadata (the ``phonenumbers`` port) decides whether the candidate is
a possible (with ``+``) or valid (without) number. A candidate without a ``+`` country code
is read as a North American number, and only when it has the separators of one
(``(212) 736-5001``, ``212-736-5001``, ``212.736.5001``): a bare run of ten digits is an
id, a size or a timestamp far more often than a phone number.

Cards: 13-19 digits, contiguous or in groups of four (Amex 4-6-5), that pass the Luhn check
*and* fall in an issuer range with that issuer's length (Visa, Mastercard, Amex, Discover,
JCB, Diners, UnionPay). Order ids and timestamps fail one of the two (an epoch in ms or ns
starts with 1, no issuer's range).
"""

from __future__ import annotations

import re

import phonenumbers

from corpus.scrub.findings import Finding

_PHONE = re.compile(
    r"(?<![\w.+/\-])(?:tel:)?(?P<num>\+\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){1,5}[ .\-]?\d{2,5}"
    r"|\+\d{8,15}"
    r"|\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}"
    r"|\d{3}[.\-]\d{3}[.\-]\d{4})(?![\w\-]|\.\d)"
)
_CARD = re.compile(
    r"(?<![\w.+/\-])(?P<num>\d{13,19}|\d{4}(?:[ \-]\d{4}){2,3}(?:[ \-]\d{1,3})?"
    r"|\d{4}[ \-]\d{6}[ \-]\d{4,5})(?![\w\-]|[.:]\d)"
)
# (prefix range low, high, lengths)
_ISSUERS: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (4, 4, (13, 16, 19)),  # Visa
    (51, 55, (16,)),  # Mastercard
    (2221, 2720, (16,)),  # Mastercard 2-series
    (34, 34, (15,)),  # Amex
    (37, 37, (15,)),  # Amex
    (6011, 6011, (16, 17, 18, 19)),  # Discover
    (644, 649, (16, 17, 18, 19)),  # Discover
    (65, 65, (16, 17, 18, 19)),  # Discover
    (3528, 3589, (16, 17, 18, 19)),  # JCB
    (300, 305, (14, 15, 16, 17, 18, 19)),  # Diners Club
    (36, 36, (14, 15, 16, 17, 18, 19)),  # Diners Club
    (38, 39, (16, 17, 18, 19)),  # Diners Club
    (62, 62, (16, 17, 18, 19)),  # UnionPay
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def issuer_range(digits: str) -> bool:
    """Whether ``digits`` starts with a card issuer's prefix and has that issuer's length."""
    n = len(digits)
    for low, high, lengths in _ISSUERS:
        width = len(str(low))
        if n in lengths and low <= int(digits[:width]) <= high:
            return True
    return False


def scan_cards(text: str) -> list[Finding]:
    found = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group("num"))
        if 13 <= len(digits) <= 19 and issuer_range(digits) and luhn_valid(digits):
            found.append(Finding(m.start(), m.end(), "payment_card", "PII", "sure", "pii:card"))
    return found


def scan_phones(text: str) -> list[Finding]:
    found = []
    for m in _PHONE.finditer(text):
        num = m.group("num")
        digits = sum(c.isdigit() for c in num)
        if not 7 <= digits <= 15:
            continue
        try:
            parsed = phonenumbers.parse(num, None if num.startswith("+") else "US")
        except phonenumbers.NumberParseException:
            continue
        # "+CC …" is written only for phone numbers: a possible number is enough (numbers in
        # ranges kept for fiction, such as UK 07700 900xxx, are still someone's to call)
        plus = num.startswith("+")
        if (phonenumbers.is_possible_number if plus else phonenumbers.is_valid_number)(parsed):
            found.append(Finding(m.start(), m.end(), "phone", "PII", "sure", "pii:phone"))
    return found


# every phone or card candidate holds "+<digit>" or two runs of 3 digits close together
_PREFILTER = re.compile(r"\d{3}[ .\-)]{0,2}\d{3}|\+\d")


def scan_numbers(text: str, *, phones: bool = True, cards: bool = True) -> list[Finding]:
    """Phone and card findings (sure); a card wins over a phone on the same digits."""
    if not _PREFILTER.search(text):
        return []
    found = scan_cards(text) if cards else []
    if phones:
        taken = [(f.start, f.end) for f in found]
        found += [
            f for f in scan_phones(text) if not any(a < f.end and f.start < b for a, b in taken)
        ]
    return found
