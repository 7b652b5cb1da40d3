"""Rules that learn: `strategy: bandit` rules get their variant weights from Thompson
sampling on the rule's own results, on a schedule.

`BanditLearner` runs in the campaign worker. Every `bandit.every` it counts, per variant
of each bandit rule, the messages submitted and their clicks (or attributed conversions)
from the fact topics, draws new weights (`bandit.update_weights`, each variant keeping at
least `bandit.min_share`), and publishes them to the compacted `rules.variant_weights`
(the routers follow it) and, with every number it used, to `campaigns.decisions`.
`rassylka rules weights` shows the current weights.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

from pipeline import kafka_io, topics
from pipeline.campaigns.bandit import bandit_update
from pipeline.campaigns.decision import VariantResult
from pipeline.campaigns.facts import reactions
from pipeline.rules.model import Rule, RuleSet
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def rule_results(settings: Settings, rule: Rule) -> list[VariantResult]:
    """Per variant of `rule`: messages submitted (targeted), delivered, and successes
    (clicks on them, or conversions the attribution credited to the rule)."""
    variant_of: dict[str, str] = {}
    for msg in kafka_io.read_topic(settings, topics.OUTCOMES, None, 30, idle=1.0):
        r = msg.record
        if r and r.get("rule_id") == rule.id and r["status"] == "submitted" and r.get("message_id"):
            variant_of[r["message_id"]] = r.get("variant") or ""
    targeted = Counter(variant_of.values())
    metric = "click" if rule.bandit is None else rule.bandit.metric
    seen = reactions(settings, variant_of, metric)
    delivered, successes = seen.delivered, seen.successes
    return [VariantResult(v.name, targeted[v.name], min(delivered[v.name], targeted[v.name]),
                          min(successes[v.name], targeted[v.name]), 0, 0)
            for v in rule.variants]


def current_weights(settings: Settings) -> dict[str, dict[str, Any]]:
    """The newest weights record per bandit rule id."""
    from pipeline.campaigns.runner import read_latest

    return read_latest(settings, topics.VARIANT_WEIGHTS)


class BanditLearner:
    """Updates the weights of every `strategy: bandit` rule when its `every` has passed."""

    def __init__(self, settings: Settings, ruleset: RuleSet) -> None:
        self.settings = settings
        self.rules = [r for r in ruleset.rules if r.bandit is not None]
        self.last: dict[str, dict[str, Any]] = current_weights(settings) if self.rules else {}
        self.producer = kafka_io.producer(settings) if self.rules else None

    def tick(self, now_ms: int | None = None) -> list[str]:
        """Update the rules that are due; returns their ids."""
        now_ms = now_ms or int(time.time() * 1000)
        done = []
        for rule in self.rules:
            assert rule.bandit is not None
            last = self.last.get(rule.id)
            if last and now_ms - int(last["updated_at_ms"]) < rule.bandit.every_s * 1000:
                continue
            self.update(rule, now_ms)
            done.append(rule.id)
        return done

    def update(self, rule: Rule, now_ms: int) -> dict[str, Any]:
        assert rule.bandit is not None and self.producer is not None
        results = rule_results(self.settings, rule)
        previous = (self.last.get(rule.id) or {}).get("weights") or {
            v.name: v.weight / sum(x.weight for x in rule.variants) for v in rule.variants}
        update = bandit_update(rule.id, results, previous, min_share=rule.bandit.min_share,
                               seed=now_ms // 1000)
        record = {"rule_id": rule.id, "kind": "bandit", "metric": rule.bandit.metric,
                  "weights": update.weights, "previous_weights": update.previous_weights,
                  "updated_at_ms": now_ms, "inputs": update.inputs}
        value = json.dumps(record).encode()
        self.producer.produce(self.settings.topic(topics.VARIANT_WEIGHTS), key=rule.id.encode(),
                              value=value)
        self.producer.produce(self.settings.topic(topics.CAMPAIGN_DECISIONS), key=rule.id.encode(),
                              value=value)
        if self.producer.flush(30):
            log.warning("bandit weights of %s not acknowledged; trying again next time", rule.id)
            return record
        self.last[rule.id] = record
        log.info("rule %s: weights %s (from %s)", rule.id,
                 {k: round(v, 3) for k, v in update.weights.items()},
                 {r.variant: f"{r.successes}/{r.targeted}" for r in results})
        return record
