"""Campaign definitions: `config/campaigns/<id>.yaml`, validated into a `Campaign`.

A campaign sends one promotion to a segment's audience, through the same router rule,
templates and sender checks as any promotion event: the campaign worker publishes one
`promotion` event per recipient (event id `campaign:<id>:<customer>`, so its request id
is fixed and a replay sends nobody twice) naming the rule's variant it must use.

    id: winter_sale
    description: Winter sale for engaged customers.
    audience:
      segment: engaged                  # config/segments.yaml
      exclude: [recent_buyers]          # segments left out
    rule: promotion_discount            # a promotion rule of config/rules.yaml ...
    variants: [a, b]                    # ... and the variants under test (default: all)
    promotion: {promo_code: WINTER, discount_percent: 15, landing_url: "https://shop.example.ru/sale"}
    window: {from: "10:00", to: "20:00"}   # the recipient's local time
    pacing: {per_minute: 600}           # or {spread_hours: 4}
    budget: {max_messages: 50000}
    test: {fraction: 0.2, holdout: 0.1, evaluate_after: 2h}
    metric: {kind: click, attribution: 3d}
    decision: {min_sample_per_variant: 8000, win_probability: 0.975}
    guardrails: {max_opt_out_rate: 0.01, max_failure_rate: 0.10}
    on_no_winner: best_mean             # or stop, or split (keep every variant)
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

CAMPAIGNS_DIR = "campaigns"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def duration_s(value: str | int) -> int:
    """`90s`, `15m`, `2h`, `3d` (or plain seconds) → seconds."""
    if isinstance(value, int):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30m, 2h or 3d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _duration(value: str) -> str:
    duration_s(value)  # raises ValueError with the reason
    return value


Duration = Annotated[str, AfterValidator(_duration)]
"""A duration as written in YAML (`30m`, `2h`, `3d`), checked when the file loads."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Audience(_Model):
    segment: str
    exclude: tuple[str, ...] = ()


class Window(_Model):
    """Sending hours in the recipient's local time; `to` may be past midnight."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    start: str = Field(alias="from")
    end: str = Field(alias="to")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day HH:MM")
        return value

    def minutes(self) -> tuple[int, int]:
        h1, m1 = self.start.split(":")
        h2, m2 = self.end.split(":")
        return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)

    def is_open(self, minute_of_day: int) -> bool:
        start, end = self.minutes()
        if start <= end:
            return start <= minute_of_day < end
        return minute_of_day >= start or minute_of_day < end


class Pacing(_Model):
    per_minute: int | None = Field(default=None, gt=0, le=100_000_000)
    spread_hours: float | None = Field(default=None, gt=0, le=24 * 30)

    @model_validator(mode="after")
    def _one(self) -> Pacing:
        if (self.per_minute is None) == (self.spread_hours is None):
            raise ValueError("give exactly one of per_minute or spread_hours")
        return self

    def rate_per_s(self, audience: int) -> float:
        if self.per_minute is not None:
            return self.per_minute / 60.0
        assert self.spread_hours is not None
        return max(audience, 1) / (self.spread_hours * 3600.0)


class Budget(_Model):
    max_messages: int | None = Field(default=None, gt=0)


class TestPhase(_Model):
    fraction: float = Field(default=0.2, gt=0, le=1)
    holdout: float = Field(default=0.0, ge=0, lt=1)
    evaluate_after: Duration = "2h"


class Metric(_Model):
    kind: Literal["click", "conversion"] = "click"
    attribution: Duration = "3d"


class DecisionSettings(_Model):
    min_sample_per_variant: int = Field(default=8_000, gt=0)
    win_probability: float = Field(default=0.975, gt=0.5, lt=1)


class Guardrails(_Model):
    max_opt_out_rate: float = Field(default=0.01, gt=0, le=1)
    max_failure_rate: float = Field(default=0.10, gt=0, le=1)
    min_sample: int = Field(default=500, gt=0)


class Campaign(_Model):
    """One campaign, validated. `variants` empty means every variant of the rule."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    description: str = ""
    audience: Audience
    rule: str
    variants: tuple[str, ...] = ()
    promotion: dict[str, str | int | float] = Field(default_factory=dict)
    start_at: str | None = None
    end_at: str | None = None
    window: Window | None = None
    pacing: Pacing = Pacing(per_minute=600)
    budget: Budget = Budget()
    test: TestPhase = TestPhase()
    metric: Metric = Metric()
    decision: DecisionSettings = DecisionSettings()
    guardrails: Guardrails = Guardrails()
    on_no_winner: Literal["best_mean", "stop", "split"] = "best_mean"

    @field_validator("start_at", "end_at")
    @classmethod
    def _moment(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO 8601 time") from exc
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone offset (write +03:00 or Z)")
        return str(value)

    @field_validator("promotion")
    @classmethod
    def _promotion(cls, value: dict[str, str | int | float]) -> dict[str, str | int | float]:
        allowed = {"promo_code", "discount_percent", "valid_until", "landing_url"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown promotion field(s) {unknown}; known: {sorted(allowed)}")
        return value


def bucket(campaign_id: str, customer_id: str) -> float:
    """A reproducible number in [0, 1) per campaign and customer: the random split."""
    digest = hashlib.blake2b(f"{campaign_id}|{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(campaign: Campaign, variants: tuple[str, ...], customer_id: str) -> tuple[str, str | None]:
    """(phase, variant) of one audience member: `holdout` (nothing is sent), `test` with
    a variant, or `rollout` (variant chosen by the decision later)."""
    x = bucket(campaign.id, customer_id)
    holdout = campaign.test.holdout * campaign.test.fraction
    if x < holdout:
        return "holdout", None
    if x < campaign.test.fraction:
        share = (x - holdout) / (campaign.test.fraction - holdout)
        return "test", variants[min(int(share * len(variants)), len(variants) - 1)]
    return "rollout", None


def split_variant(campaign_id: str, variants: tuple[str, ...], customer_id: str) -> str:
    """An even, reproducible share of `variants` per customer, independent of `assign`'s
    split (so rollout members, all above the test fraction, still spread evenly)."""
    x = bucket(f"{campaign_id}|split", customer_id)
    return variants[min(int(x * len(variants)), len(variants) - 1)]


def campaign_files(config_dir: Path) -> list[Path]:
    folder = Path(config_dir) / CAMPAIGNS_DIR
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def load_campaigns(config_dir: Path) -> dict[str, Campaign]:
    """Every campaign under `config/campaigns/`; ConfigError naming each file's problems."""
    campaigns: dict[str, Campaign] = {}
    problems: list[str] = []
    for path in campaign_files(config_dir):
        label = f"config/{CAMPAIGNS_DIR}/{path.name}"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            campaign = Campaign.model_validate(data)
        except yaml.YAMLError as exc:
            problems.append(f"{label}: not valid YAML: {exc}")
            continue
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top)"
                problems.append(f"{label}: {where}: {err['msg']}")
            continue
        if campaign.id in campaigns:
            problems.append(f"{label}: campaign id {campaign.id!r} is used twice")
        elif path.stem != campaign.id:
            problems.append(f"{label}: the file name must be the campaign id ({campaign.id}.yaml)")
        else:
            campaigns[campaign.id] = campaign
    if problems:
        raise ConfigError(problems, hint="fix the campaign files, then `rassylka campaign validate`")
    return campaigns


def check_references(campaign: Campaign, segments: set[str], rules: dict[str, tuple[str, ...]]) -> list[str]:
    """Problems with what a campaign names: segments, the rule and its variants.
    `rules` maps each promotion rule id to its variant names."""
    problems = []
    for name in (campaign.audience.segment, *campaign.audience.exclude):
        if name not in segments:
            problems.append(f"campaign {campaign.id}: unknown segment {name!r}")
    if campaign.rule not in rules:
        problems.append(f"campaign {campaign.id}: {campaign.rule!r} is not a promotion rule "
                        f"(known: {', '.join(sorted(rules)) or 'none'})")
    else:
        missing = [v for v in campaign.variants if v not in rules[campaign.rule]]
        if missing:
            problems.append(f"campaign {campaign.id}: rule {campaign.rule} has no variant(s) "
                            f"{missing} (it has {list(rules[campaign.rule])})")
    return problems
