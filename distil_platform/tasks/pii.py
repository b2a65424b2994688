"""Personal data in production traces, masked before anything is stored.

Three kinds, each replaced by a placeholder and counted per occurrence:

- ``email`` -> ``[EMAIL]``: ``local@domain.tld`` (the usual address characters; a TLD of 2+ letters);
- ``card`` -> ``[CARD]``: 13 to 19 digits, optionally grouped by single spaces or dashes, that pass
  the Luhn check (so an order number of 16 random digits stays, 9 times in 10);
- ``phone`` -> ``[PHONE]``: 9 to 15 digits written as a phone number, i.e. starting with ``+`` or
  ``00`` (international) or with a ``(area)`` group, or in 3+ groups split by spaces, dots or dashes
  (``555-123-4567``, ``030 1234 5678``). A bare run of digits without ``+`` is not a phone (order
  numbers, amounts, years and times are left alone).

Masking is the default of every trace source (``data.traces.mask_pii``, docs/traces.md); this is not
:mod:`distil_platform.redact` (passwords in URLs, for logs). JSON values (a tool call's arguments, a
chat history) are masked value by value, so the JSON stays valid: a card number given as a JSON
number becomes the string ``"[CARD]"``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

PII_KINDS = ("email", "phone", "card")
PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}

_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![\w-])")
# 13-19 digits, groups split by one space or dash.
_CARD_RE = re.compile(r"(?<![\w+])\d(?:[ -]?\d){12,18}(?!\w)")
# International (+ or 00), an (area) group, or 3+ digit groups split by one separator.
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{1,5}){0,4}"
    r"|\(\d{2,5}\)[ .-]?\d{2,5}(?:[ .-]?\d{2,5}){0,3}"
    r"|\d{2,5}(?:[ .-]\d{2,5}){2,4})(?![\w])")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of digits (what every payment card number satisfies)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def mask_text(text: str, counts: Counter | None = None) -> str:
    """``text`` with every e-mail address, card number and phone number replaced by its placeholder;
    ``counts`` (kind -> occurrences) is updated in place when given."""
    counts = counts if counts is not None else Counter()

    def email(match: re.Match) -> str:
        counts["email"] += 1
        return PLACEHOLDERS["email"]

    def card(match: re.Match) -> str:
        if luhn_ok(_digits(match.group(0))):
            counts["card"] += 1
            return PLACEHOLDERS["card"]
        return match.group(0)

    def phone(match: re.Match) -> str:
        if 9 <= len(_digits(match.group(0))) <= 15:
            counts["phone"] += 1
            return PLACEHOLDERS["phone"]
        return match.group(0)

    text = _EMAIL_RE.sub(email, text)
    text = _CARD_RE.sub(card, text)
    return _PHONE_RE.sub(phone, text)


def mask_value(value: Any, counts: Counter | None = None) -> Any:
    """:func:`mask_text` over every string in a JSON value (dicts, lists); an integer that is a
    Luhn-valid 13-19 digit card number becomes ``"[CARD]"``."""
    counts = counts if counts is not None else Counter()
    if isinstance(value, str):
        return mask_text(value, counts)
    if isinstance(value, dict):
        return {k: mask_value(v, counts) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v, counts) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and 13 <= len(str(abs(value))) <= 19 \
            and luhn_ok(str(abs(value))):
        counts["card"] += 1
        return PLACEHOLDERS["card"]
    return value


def mask_json_text(text: str, counts: Counter | None = None) -> str:
    """A JSON document masked value by value (re-serialised compactly, keys in their order); text
    that is not JSON is masked as text."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return mask_text(text, counts)
    if not isinstance(value, (dict, list)):
        return mask_text(text, counts)
    return json.dumps(mask_value(value, counts), ensure_ascii=False)
