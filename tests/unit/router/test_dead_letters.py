"""Dead letters the router writes when even a dead letter is too big to store."""

from __future__ import annotations

from pipeline.avro import decode, encode
from pipeline.deadletter import MAX_ERROR, MAX_SLIM_EVENT_ID, dead_letter, without_payload


def test_without_payload_drops_the_bytes_and_says_so():
    record = dead_letter("router", "render_timeout", "rule r: took too long", "events.x", 3, 42,
                         b"key", b"v" * 999_990, "e-1", now_ms=1)
    slim = without_payload(record, "MSG_SIZE_TOO_LARGE: Broker: Message size too large")
    assert decode("dead_letter", encode("dead_letter", slim)) == slim
    assert (slim["key"], slim["value"]) == (None, None)
    assert slim["reason"] == "render_timeout" and slim["event_id"] == "e-1"
    assert (slim["source_topic"], slim["source_partition"], slim["source_offset"]) == (
        "events.x", 3, 42)
    assert slim["error"] == (
        "original key and value (999,993 bytes) not copied: MSG_SIZE_TOO_LARGE: Broker: "
        "Message size too large | rule r: took too long"
    )
    long = without_payload(record | {"error": "e" * MAX_ERROR, "event_id": "i" * 500_000}, "big")
    assert len(long["error"]) == MAX_ERROR and long["error"].startswith("original key")
    assert long["event_id"] == "i" * MAX_SLIM_EVENT_ID
    assert len(encode("dead_letter", long)) < 3000  # a slim dead letter is always small
