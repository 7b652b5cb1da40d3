"""ConsentTable: the sender's compact consent state must equal folding every decoded record
with `apply_change` into a dict, whatever the records, including ones it reads by hand."""

import random

import pytest

from pipeline import avro
from pipeline.sender.consent import (
    SOURCES,
    ConsentState,
    ConsentTable,
    InvalidConsentChange,
    _read_usual,
    apply_change,
)

INT64 = (-(2**63), 2**63 - 1)


def record(phone="+79161234567", scope="marketing", status="opt_in", source="web_form",
           at=1_700_000_000_000, customer_id=None, evidence=None):
    return {"phone": phone, "scope": scope, "status": status, "source": source,
            "changed_at_ms": at, "customer_id": customer_id, "evidence": evidence}


def reference(values):
    """What the sender held before ConsentTable: decode, `apply_change`, skip what raises."""
    states: dict[str, ConsentState] = {}
    for value in values:
        try:
            change = avro.decode("consent_change", value)
            states[change["phone"]] = apply_change(states.get(change["phone"]), change)
        except Exception:
            pass
    return states


def table_of(values):
    table = ConsentTable()
    for value in values:
        try:
            table.apply_encoded(value)
        except Exception:
            pass
    return table


def random_records(rng, n):
    """Mostly usual records on few phones (so they conflict), some of every unusual kind."""
    phones = [f"+7903{i:07d}" for i in range(40)]
    odd_phones = ["", "+", "+7 903 000", "тел", "+" + "9" * 70, "+0123", "+1234567890123456",
                  "79030000001", "++79030000001", "+٧٩٠٣", "+7_903"]
    for _ in range(n):
        odd = rng.random() < 0.3
        yield record(
            phone=rng.choice(odd_phones if odd and rng.random() < 0.2 else phones),
            scope=rng.choice(["marketing", "transactional", *(["ads"] if odd else [])]),
            status=rng.choice(["opt_in", "opt_out", *(["maybe"] if odd else [])]),
            source=rng.choice([*SOURCES, "", *(["partner_api", "импорт"] if odd else [])]),
            at=rng.choice([rng.randrange(0, 300), rng.randrange(-300, 300), 1_700_000_000_000,
                           *([rng.randrange(*INT64), *INT64] if odd else [])]),
            customer_id=rng.choice([None, *(["c1"] if odd else [])]),
            evidence=rng.choice([None, *(["STOP"] if odd else [])]),
        )


def damaged(rng, value):
    """Truncated, cut short, bit-flipped or re-headed copies of an encoded record."""
    flipped = bytearray(value)
    flipped[rng.randrange(10, len(value))] ^= 1 << rng.randrange(8)
    return [value[:rng.randrange(len(value))], bytes(flipped), value + b"\x00",
            b"\xc3\x01" + bytes(8) + value[10:], b"\x00" + value]


def test_usual_records_are_read_by_hand():
    assert _read_usual(avro.encode("consent_change", record())) == (
        79161234567, True, 1_700_000_000_000 << 8 | SOURCES.index("web_form") << 2 | 1)
    unusual = [record(evidence="STOP"), record(customer_id="c1"), record(source="partner_api"),
               record(scope="ads"), record(phone="тел"), record(phone="+" + "9" * 70),
               record(phone="+0123"), record(phone="+٧٩٠٣"), record(phone="++7903")]
    for change in unusual:
        assert _read_usual(avro.encode("consent_change", change)) is None


@pytest.mark.parametrize("seed", range(3))
def test_table_equals_folding_decoded_records(seed):
    rng = random.Random(seed)
    values = [avro.encode("consent_change", r) for r in random_records(rng, 2000)]
    values += [bad for value in rng.sample(values, 200) for bad in damaged(rng, value)]
    rng.shuffle(values)
    expected = reference(values)
    table = table_of(values)
    assert dict(table) == expected
    assert len(table) == len(expected) and table == expected
    for phone, state in expected.items():
        assert phone in table and table.get(phone) == table[phone] == state


def test_bad_records_raise_as_a_full_decode_does():
    table = ConsentTable()
    with pytest.raises(avro.DecodeError):
        table.apply_encoded(b"not avro")
    with pytest.raises(InvalidConsentChange):
        table.apply_encoded(avro.encode("consent_change", record(status="maybe")))
    assert len(table) == 0


def test_apply_folds_like_apply_change():
    table = ConsentTable()
    changes = [record(at=200), record(status="opt_out", at=100),
               record(scope="transactional", status="opt_out", at=50, source="support"),
               record(phone="+79000000000", scope="transactional", at=7),
               record(phone="+79000000001", at=-5), record(phone="+٧٩٠٣"),
               record(phone="+0079000000001"), record(phone="+123456789012345")]
    expected: dict[str, ConsentState] = {}
    for change in changes:
        table.apply(change)
        expected[change["phone"]] = apply_change(expected.get(change["phone"]), change)
    assert dict(table) == expected and sorted(table) == sorted(expected)
    assert table.get("+70000000000") is None and "+70000000000" not in table
    with pytest.raises(KeyError):
        table["+70000000000"]


def test_every_one_byte_change_of_a_usual_record_reads_as_a_full_decode_does():
    for usual in (record(), record(scope="transactional", status="opt_out", source="", at=-1)):
        value = avro.encode("consent_change", usual)
        for at in range(10, len(value)):
            for byte in range(256):
                changed = value[:at] + bytes([byte]) + value[at + 1:]
                assert dict(table_of([changed])) == reference([changed]), (at, byte)
