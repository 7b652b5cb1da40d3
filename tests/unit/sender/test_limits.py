import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.sender.caps import Cap
from pipeline.sender.limits import DEFAULT_ALLOWED_REGIONS, Limits, load_limits, parse_limits
from pipeline.sender.setup import load_policy

REPO_LIMITS = Path(__file__).resolve().parents[3] / "config" / "limits.yaml"


def problems_of(data):
    with pytest.raises(ConfigError) as info:
        parse_limits(data)
    return info.value.problems


def test_repo_config_loads():
    limits = load_limits(REPO_LIMITS)
    assert limits.quiet_hours["marketing"].start_min == 21 * 60
    assert limits.quiet_hours["marketing"].end_min == 9 * 60
    assert "transactional" not in limits.quiet_hours
    assert limits.frequency_caps["marketing"].caps == (Cap(86_400, 2), Cap(604_800, 5))
    assert limits.allowed_regions == DEFAULT_ALLOWED_REGIONS
    assert limits.routes["smpp_main"].rate_per_s == 200
    assert "стоп" in limits.stop_words.marketing
    assert {"stopall", "stop all", "стоп все"} <= limits.stop_words.all_scopes
    russia = limits.zones_by_country["RU"]
    assert (russia[0], russia[-1], len(russia)) == ("Europe/Kaliningrad", "Asia/Kamchatka", 12)


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("")
    assert load_limits(path) == Limits()


def test_empty_sections_mean_none():
    limits = parse_limits({"quiet_hours": {}, "frequency_caps": {}, "routes": {}})
    assert dict(limits.quiet_hours) == {} and dict(limits.frequency_caps) == {}


def test_small_config():
    limits = parse_limits(
        {
            "quiet_hours": {
                "marketing": {"start": "22:00", "end": "08:30", "default_time_zone": "Asia/Omsk"}
            },
            "frequency_caps": {
                "marketing": [{"window": "12h", "max": 1}, {"window": 3600, "max": 1}]
            },
            "allowed_regions": ["RU", "kz"],
            "routes": {"r1": {"binds": 3, "rate_per_bind": 120.5, "burst": 7}},
        }
    )
    rule = limits.quiet_hours["marketing"]
    assert (rule.start_min, rule.end_min, rule.default_zone.key) == (1320, 510, "Asia/Omsk")
    assert limits.frequency_caps["marketing"].caps == (Cap(43_200, 1), Cap(3_600, 1))
    assert limits.allowed_regions == frozenset({"RU", "KZ"})
    route = limits.routes["r1"]
    assert route.rate_per_s == pytest.approx(361.5) and route.burst == 7
    assert route.bucket().try_take(0.0, 7) == 0.0


def test_route_burst_default():
    route = parse_limits({"routes": {"r": {"binds": 2, "rate_per_bind": 100}}}).routes["r"]
    assert route.burst == 20


def test_bad_time():
    assert problems_of({"quiet_hours": {"marketing": {"start": "25:00", "end": "09:00"}}}) == [
        "limits.yaml: quiet_hours.marketing.start: '25:00' is not a time of day HH:MM (00:00-23:59)"
    ]


def test_unquoted_time_is_explained():
    data = yaml.safe_load("quiet_hours: {marketing: {start: 21:00, end: '09:00'}}")
    [problem] = problems_of(data)
    assert "quiet_hours.marketing.start" in problem and "quote" in problem


def test_unknown_keys_at_every_level():
    problems = problems_of(
        {
            "quiet_hour": {},
            "quiet_hours": {
                "marketing": {"strat": "21:00", "start": "21:00", "end": "09:00"},
                "promo": {},
            },
            "routes": {"r": {"binds": 1, "rate_per_bind": 1, "rate": 5}},
        }
    )
    assert problems == [
        "limits.yaml: unknown key 'quiet_hour' (expected: allowed_regions, frequency_caps,"
        " quiet_hours, routes, stop_words)",
        "limits.yaml: quiet_hours: unknown lane 'promo' (expected: transactional, marketing)",
        "limits.yaml: quiet_hours.marketing: unknown key 'strat' (expected: default_time_zone,"
        " end, start)",
        "limits.yaml: routes.r: unknown key 'rate' (expected: binds, burst, rate_per_bind)",
    ]


def test_negative_and_malformed_caps():
    problems = problems_of(
        {
            "frequency_caps": {
                "marketing": [
                    {"window": "24h", "max": -1},
                    {"window": "1w", "max": 2},
                    {"window": 0, "max": 2},
                    {"max": True},
                ]
            }
        }
    )
    assert problems == [
        "limits.yaml: frequency_caps.marketing[0].max: must be a whole number >= 0, got int -1",
        "limits.yaml: frequency_caps.marketing[1].window: '1w' is not a duration: seconds, or a"
        " number with s, m, h or d ('24h', '7d')",
        "limits.yaml: frequency_caps.marketing[2].window: must be a positive duration, got 0",
        "limits.yaml: frequency_caps.marketing[3]: missing 'window' (e.g. '24h')",
        "limits.yaml: frequency_caps.marketing[3].max: must be a whole number >= 0, got bool True",
    ]


def test_bad_zone_and_empty_window():
    problems = problems_of(
        {
            "quiet_hours": {
                "marketing": {"start": "21:00", "end": "09:00", "default_time_zone": "Moscow"},
                "transactional": {"start": "22:00", "end": "22:00"},
            }
        }
    )
    assert problems == [
        "limits.yaml: quiet_hours.marketing.default_time_zone: unknown IANA time zone 'Moscow'",
        "limits.yaml: quiet_hours.transactional: start and end are both '22:00': an empty window",
    ]


def test_bad_regions():
    data = yaml.safe_load("allowed_regions: [RU, NO, XX, 7]")
    assert problems_of(data) == [
        "limits.yaml: allowed_regions[1]: False is not a region code (quote it: 'NO' reads as"
        " false in YAML)",
        "limits.yaml: allowed_regions[2]: 'XX' is not a known ISO 3166 region code (e.g. 'RU')",
        "limits.yaml: allowed_regions[3]: 7 is not a known ISO 3166 region code (e.g. 'RU')",
    ]
    assert problems_of({"allowed_regions": []}) == [
        "limits.yaml: allowed_regions: must be a non-empty list of region codes, got list []"
    ]


def test_bad_routes():
    problems = problems_of(
        {
            "routes": {
                "a": {"binds": 0, "rate_per_bind": 100},
                "b": {"binds": 1.5, "rate_per_bind": -1, "burst": 0},
                "c": {"rate_per_bind": 10},
            }
        }
    )
    assert problems == [
        "limits.yaml: routes.a.binds: must be a whole number > 0, got int 0",
        "limits.yaml: routes.b.binds: must be a whole number > 0, got float 1.5",
        "limits.yaml: routes.b.rate_per_bind: must be a number > 0, got int -1",
        "limits.yaml: routes.b.burst: must be a whole number > 0, got int 0",
        "limits.yaml: routes.c: missing 'binds'",
    ]


def test_stop_words_config():
    limits = parse_limits({"stop_words": {"marketing": ["СТОП", "Хватит"]}})
    assert limits.stop_words.marketing == frozenset({"стоп", "хватит"})
    assert limits.stop_words.all_scopes == frozenset()
    assert problems_of({"stop_words": {"marketing": []}}) == [
        "limits.yaml: stop_words: no stop words at all: customers could not opt out by SMS"
    ]
    assert problems_of({"stop_words": {"marketing": "stop"}})[0].startswith(
        "limits.yaml: stop_words.marketing: must be a list of words or phrases"
    )


def test_stop_phrases_config():
    limits = parse_limits({"stop_words": {"marketing": ["Хватит!"], "all_scopes": ["Стоп, ВСЁ"]}})
    assert limits.stop_words.marketing == frozenset({"хватит"})
    assert limits.stop_words.all_scopes == frozenset({"стоп все"})
    assert problems_of({"stop_words": {"marketing": ["stop", "!!!"]}}) == [
        "limits.yaml: stop_words.marketing[1]: '!!!' has no letters or digits"
    ]


def test_configured_stop_word_reaches_the_senders_policy(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(REPO_LIMITS.parent, config)
    (config / "limits.yaml").write_text(
        "stop_words:\n  marketing: [СТОП, ХВАТИТ]\n  all_scopes: [STOPALL]\n", encoding="utf-8"
    )
    policy, limits = load_policy(config)
    assert policy.stop_words == limits.stop_words
    assert "хватит" in policy.stop_words.marketing


def test_zones_by_country():
    limits = parse_limits(
        {
            "quiet_hours": {
                "marketing": {"start": "21:00", "end": "09:00"},
                "zones_by_country": {"ru": ["Europe/Moscow", "Asia/Omsk"]},
            }
        }
    )
    assert dict(limits.zones_by_country) == {"RU": ("Europe/Moscow", "Asia/Omsk")}
    assert set(limits.quiet_hours) == {"marketing"}
    assert dict(parse_limits({"quiet_hours": {}}).zones_by_country) == {}


def test_bad_zones_by_country():
    problems = problems_of(
        {"quiet_hours": {"zones_by_country": {"RU": ["Mars/Olympus"], "XX": ["UTC"], "KZ": []}}}
    )
    assert problems == [
        "limits.yaml: quiet_hours.zones_by_country.RU: unknown IANA time zone 'Mars/Olympus'",
        "limits.yaml: quiet_hours.zones_by_country.XX: 'XX' is not a known ISO 3166 region"
        " code (e.g. 'RU')",
        "limits.yaml: quiet_hours.zones_by_country.KZ: must be a non-empty list of IANA time"
        " zones, got list []",
    ]
    assert problems_of({"quiet_hours": {"zones_by_country": ["RU"]}}) == [
        "limits.yaml: quiet_hours.zones_by_country: must be a mapping of region code to zones,"
        " got list ['RU']"
    ]


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert problems_of(["x"]) == ["limits.yaml: must be a mapping of sections, got list ['x']"]
    path = tmp_path / "limits.yaml"
    path.write_text("quiet_hours: [\n")
    with pytest.raises(ConfigError) as info:
        load_limits(path)
    assert "not valid YAML" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_limits(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


def test_all_problems_reported_at_once():
    problems = problems_of(
        {
            "quiet_hours": {"marketing": {"start": "25:00", "end": "9"}},
            "frequency_caps": {"marketing": [{"window": "24h", "max": -3}]},
        }
    )
    assert len(problems) == 3
