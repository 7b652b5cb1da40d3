"""What happened to a set of sent messages, counted per variant from the fact topics.

Campaign decisions (`runner.test_results`) and bandit weights (`learning.rule_results`)
both start from "these message ids went out as these variants" and need, per variant,
how many were delivered or failed (the first final receipt of each message) and how many
succeeded on the metric (clicked, or credited with a conversion by the attribution).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipeline import kafka_io, topics
from pipeline.settings import Settings

FAILED_RECEIPTS = {"UNDELIV", "REJECTD", "EXPIRED", "DELETED", "UNKNOWN"}


@dataclass(frozen=True)
class Reactions:
    delivered: Counter[str]
    failed: Counter[str]
    successes: Counter[str]


def reactions(settings: Settings, variant_of: dict[str, str], metric: str) -> Reactions:
    """Per variant of the messages in `variant_of` (message id → variant): delivered and
    failed receipts, and successes on `metric` ("click" or "conversion"), each message
    counted once."""
    delivered: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    seen: set[str] = set()
    for msg in kafka_io.read_topic(settings, topics.RECEIPTS, None, 30, idle=1.0):
        r = msg.record
        if not r or r["message_id"] not in variant_of or r["message_id"] in seen:
            continue
        seen.add(r["message_id"])
        if r["state"] == "DELIVRD":
            delivered[variant_of[r["message_id"]]] += 1
        elif r["state"] in FAILED_RECEIPTS:
            failed[variant_of[r["message_id"]]] += 1
    name = topics.CLICKS if metric == "click" else topics.CONVERSIONS
    succeeded = {m.record["message_id"] for m in kafka_io.read_topic(settings, name, None, 30, idle=1.0)
                 if m.record and m.record.get("message_id") in variant_of}
    return Reactions(delivered, failed, Counter(variant_of[mid] for mid in succeeded))
