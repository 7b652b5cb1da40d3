"""Callback signatures of the HTTP gateway: HMAC-SHA256 over ``<timestamp>.<raw body>``."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from connectors.gateway import OutboundSms
from connectors.http_gateway import parse_retry_after, sign, text_of, verify_signature
from pipeline.sms.encoding import encode_sms

SECRET = "s3cret"
BODY = b'{"type":"status","message_id":"abc","status":"delivered"}'
NOW = 1_750_000_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    want = hmac.new(b"s3cret", b"1750000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == "sha256=" + want
    assert sign(SECRET.encode(), str(NOW), BODY) == "sha256=" + want


def test_valid_signature_passes() -> None:
    sig = sign(SECRET, NOW, BODY)
    assert verify_signature(SECRET, BODY, sig, str(NOW), now_s=NOW) is None
    # clocks a little apart either way are fine
    assert verify_signature(SECRET, BODY, sig, str(NOW), now_s=NOW + 299) is None
    assert verify_signature(SECRET, BODY, sig, str(NOW), now_s=NOW - 299) is None


def test_tampered_body_fails() -> None:
    sig = sign(SECRET, NOW, BODY)
    tampered = BODY.replace(b"delivered", b"undelivrd")
    assert verify_signature(SECRET, tampered, sig, str(NOW), now_s=NOW) == "bad_signature"
    assert verify_signature(SECRET, BODY + b" ", sig, str(NOW), now_s=NOW) == "bad_signature"


def test_tampered_timestamp_fails() -> None:
    # The timestamp is signed: moving it forward to pass the freshness check breaks it.
    sig = sign(SECRET, NOW - 3600, BODY)
    assert verify_signature(SECRET, BODY, sig, str(NOW), now_s=NOW) == "bad_signature"


def test_wrong_secret_fails() -> None:
    sig = sign("another", NOW, BODY)
    assert verify_signature(SECRET, BODY, sig, str(NOW), now_s=NOW) == "bad_signature"


def test_stale_or_future_timestamp_fails() -> None:
    old = sign(SECRET, NOW - 301, BODY)
    assert verify_signature(SECRET, BODY, old, str(NOW - 301), now_s=NOW) == "stale_timestamp"
    future = sign(SECRET, NOW + 301, BODY)
    assert verify_signature(SECRET, BODY, future, str(NOW + 301), now_s=NOW) == "stale_timestamp"
    assert verify_signature(SECRET, BODY, old, str(NOW - 301), now_s=NOW, tolerance_s=600) is None


@pytest.mark.parametrize(
    ("signature", "timestamp", "why"),
    [
        (None, str(NOW), "missing_signature"),
        ("", str(NOW), "missing_signature"),
        ("VALID", None, "missing_timestamp"),
        ("VALID", "", "missing_timestamp"),
        ("VALID", "yesterday", "bad_timestamp"),
        ("VALID", "-5", "bad_timestamp"),
        ("VALID", "1e9", "bad_timestamp"),
        ("VALID", "9" * 40, "bad_timestamp"),
    ],
)
def test_missing_or_malformed_headers_fail(
    signature: str | None, timestamp: str | None, why: str
) -> None:
    if signature == "VALID":
        signature = sign(SECRET, NOW, BODY)
    assert verify_signature(SECRET, BODY, signature, timestamp, now_s=NOW) == why


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 64,
        "sha256=",
        "sha1=" + "0" * 40,
        "garbage",
        "sha256=Ж" + "0" * 63,  # non-ASCII must not raise out of compare_digest
    ],
)
def test_malformed_signature_fails(signature: str) -> None:
    assert verify_signature(SECRET, BODY, signature, str(NOW), now_s=NOW) == "bad_signature"


def test_signature_without_prefix_fails() -> None:
    bare = sign(SECRET, NOW, BODY).removeprefix("sha256=")
    assert verify_signature(SECRET, BODY, bare, str(NOW), now_s=NOW) == "bad_signature"


def test_retry_after_forms() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after("2", NOW) == 2.0
    assert parse_retry_after(" 0.25 ", NOW) == 0.25
    assert parse_retry_after("-3", NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("nan", NOW) is None
    # HTTP date, 10 s after NOW (2025-06-15 15:06:40 UTC)
    assert parse_retry_after("Sun, 15 Jun 2025 15:06:50 GMT", NOW) == pytest.approx(10.0)


def test_text_is_rebuilt_from_encoded_parts() -> None:
    for text in ("Order 42 is ready", "Заказ готов. " * 12, "{curly} [brackets] €uro " * 10):
        encoded = encode_sms(text, 0x5A)
        sms = OutboundSms(
            "m",
            "Shop",
            "+79161234567",
            encoded.data_coding,
            encoded.esm_class,
            encoded.short_messages(),
        )
        assert text_of(sms) == text
