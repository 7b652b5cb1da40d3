"""The one-match reading of a canonical receipt text gives exactly the general scan's fields.

`parse_receipt_text` reads the usual SMPP 3.4 Appendix B text with one regular-expression
match and everything else with the lenient scan. Over many generated texts - canonical
ones with awkward values and bodies, and near-misses that must take the general scan -
both readings must agree wherever the fast one applies.
"""

from __future__ import annotations

import random

from connectors import receipts
from connectors.receipts import _CANONICAL, _canonical_fields, _fields, parse_receipt_text

TOKENS = ["abc", "0", "001", "a:b", "sub:1", "id:x", "Привет", "DELIVRD", "undeliv", "x_y",
          "text:", "err:", "2401011200", "ÿ", "::", "stat:ok"]
BODIES = ["", "Hello", " spaced  ", "id:zz sub:2 stat:UNDELIV", "multi\nline", "text:again",
          "Оплатите счёт", "\t"]


def _canonical(rng: random.Random) -> str:
    values = [rng.choice(TOKENS) for _ in range(7)]
    text = ("id:{} sub:{} dlvrd:{} submit date:{} done date:{} stat:{} err:{}"
            .format(*values))
    if rng.random() < 0.7:
        text += " text:" + rng.choice(BODIES)
    return text


def _mutated(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice([" ", "", "  ", "\t", "X", ":", "_", "ID:", " sub:9"]) + text[i + 1:]


def test_fast_and_general_readings_agree() -> None:
    rng = random.Random(11)
    fast = 0
    for n in range(20_000):
        text = _canonical(rng)
        if n % 2:
            text = _mutated(rng, text)
        match = _CANONICAL.match(text)
        if match:
            fast += 1
            assert _canonical_fields(match) == _fields(text), text
    assert fast > 10_000, "most generated texts take the fast path"


def test_the_usual_receipt_and_its_near_misses() -> None:
    usual = ("id:1a2b3c sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
             "stat:DELIVRD err:000 text:Hello")
    assert _CANONICAL.match(usual)
    got = parse_receipt_text(usual)
    assert (got.message_id, got.state, got.error_code, got.text, got.submitted) == (
        "1a2b3c", "DELIVRD", "000", "Hello", 1)
    for other in [usual.upper(), usual.replace(" err:", "  err:"),
                  usual.replace("submit date", "submit_date"), usual.split(" text:")[0] + " ",
                  "stat:DELIVRD id:1a2b3c err:000"]:
        assert _CANONICAL.match(other) is None, other
        assert parse_receipt_text(other) == _expected(other)


def _expected(text: str) -> receipts.ReceiptText:
    fields = _fields(text)
    state = fields.get("stat")
    return receipts.ReceiptText(
        message_id=fields.get("id") or None,
        submitted=receipts._int_or_none(fields["sub"]) if "sub" in fields else None,
        delivered=receipts._int_or_none(fields["dlvrd"]) if "dlvrd" in fields else None,
        submit_date=fields.get("submit date") or None,
        done_date=fields.get("done date") or None,
        state=receipts.normalise_state(state) if state else None,
        error_code=fields.get("err") or None,
        text=fields.get("text"))
