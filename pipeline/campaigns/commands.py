"""`rassylka campaign ...`: validate, plan, start, status, pause, resume, cancel, worker.

`plan` and `start` read the audience from ClickHouse at CLICKHOUSE_URL (with embedded
chDB, while no sink holds the store); everything else talks to Kafka only.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from pipeline.campaigns.cli import _client, console, err_console
from pipeline.campaigns.model import Campaign, assign, check_references, load_campaigns
from pipeline.settings import Settings

campaign_cli = typer.Typer(help="Campaigns: plan, start and follow them (config/campaigns/).",
                           no_args_is_help=True)
CONFIG_DIR_HELP = "Folder with campaigns/, segments.yaml and rules.yaml (default: config/)."


def _load(config_dir: Path | None) -> tuple[Settings, dict[str, Campaign], dict[str, tuple[str, ...]],
                                            dict[str, Any]]:
    """Settings, campaigns, promotion rules (id → variant names) and segments; exit 1 with
    every problem when the campaigns do not check out."""
    from pipeline.campaigns.segments import load_segments
    from pipeline.rules.loader import load_ruleset

    settings = Settings.from_env()
    folder = config_dir or settings.config_dir
    campaigns = load_campaigns(folder)
    ruleset = load_ruleset(folder)
    rules = {r.id: tuple(v.name for v in r.variants) for r in ruleset.rules_for("promotion")}
    segments = load_segments(folder)
    problems = [p for c in campaigns.values() for p in check_references(c, set(segments), rules)]
    if problems:
        for problem in problems:
            err_console.print(f"[red]✗[/red] {problem}", highlight=False)
        raise typer.Exit(1)
    return settings, campaigns, rules, segments


def _campaign(campaigns: dict[str, Campaign], campaign_id: str) -> Campaign:
    if campaign_id not in campaigns:
        err_console.print(f"[red]no campaign {campaign_id!r} in config/campaigns/ "
                          f"(known: {', '.join(sorted(campaigns)) or 'none'})[/red]", highlight=False)
        raise typer.Exit(1)
    return campaigns[campaign_id]


def audience_query(segments: dict[str, Any], campaign: Campaign, now_ms: int, columns: str) -> str:
    """SQL over `profiles` for every member: the segment minus the exclusions."""
    from pipeline.campaigns.segments import audience_sql, compile_segment

    sql = audience_sql(segments, campaign.audience.segment, now_ms, columns)
    for name in campaign.audience.exclude:
        sql += f"\n  AND customer_id NOT IN ({compile_segment(segments, name, now_ms)})"
    return sql


def audience(client: Any, segments: dict[str, Any], campaign: Campaign,
             now_ms: int) -> list[tuple[str, str]]:
    """(customer_id, time_zone) of every member."""
    rows = client.query(audience_query(segments, campaign, now_ms, "customer_id, time_zone"))
    return [(str(r["customer_id"]), str(r.get("time_zone") or "")) for r in rows]


def reachable(client: Any, segments: dict[str, Any], campaign: Campaign, now_ms: int,
              allowed_regions: frozenset[str], caps: tuple[Any, ...]) -> dict[str, int]:
    """The audience through the sender's checks in its order, counted in one query:
    `members`; then numbers the sender rejects (`invalid_number`, `not_mobile`,
    `country_not_allowed` by limits.yaml); of the rest, `opted_in` (the number's latest
    marketing consent change is an opt-in; at equal times an opt-out wins); of those,
    `capped` (already at a marketing frequency cap now, by the messages sent)."""
    fit = ("a.phone_hash != '' AND a.number_status = '' AND "
           "(a.number_region = '' OR has({allowed:Array(String)}, a.number_region))")
    windows = ", ".join(
        f"countIf(decided_at >= fromUnixTimestamp64Milli({now_ms - cap.window_s * 1000}, 'UTC'))"
        f" AS w{i}" for i, cap in enumerate(caps)) or "0 AS w0"
    capped = " OR ".join(f"s.w{i} >= {cap.max_count}" for i, cap in enumerate(caps)) or "0"
    sql = (
        "SELECT count() AS members,"
        " countIf(a.phone_hash = '' OR a.number_status = 'invalid_number') AS invalid_number,"
        " countIf(a.phone_hash != '' AND a.number_status = 'not_mobile') AS not_mobile,"
        " countIf(a.phone_hash != '' AND a.number_status = '' AND a.number_region != ''"
        "  AND NOT has({allowed:Array(String)}, a.number_region)) AS country_not_allowed,"
        f" countIf({fit} AND c.latest = 'opt_in') AS opted_in,"
        f" countIf({fit} AND c.latest = 'opt_in' AND ({capped})) AS capped"
        " FROM (" + audience_query(segments, campaign, now_ms,
                                  "phone_hash, number_status, number_region") + ") AS a"
        " LEFT JOIN (SELECT phone_hash, argMax(status, (changed_at, status = 'opt_out'))"
        "  AS latest FROM rassylka.consent_changes FINAL WHERE scope = 'marketing'"
        "  GROUP BY phone_hash) AS c ON c.phone_hash = a.phone_hash"
        f" LEFT JOIN (SELECT phone_hash, {windows} FROM rassylka.messages FINAL"
        "  WHERE lane = 'marketing' AND status = 'submitted' GROUP BY phone_hash) AS s"
        " ON s.phone_hash = a.phone_hash")
    rows = client.query(sql, {"allowed": sorted(allowed_regions)})
    return {k: int(v) for k, v in rows[0].items()} if rows else {}


@campaign_cli.command("validate")
def validate_command(config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP)) -> None:
    """Check every campaign file and what it names (segments, rule, variants)."""
    _settings, campaigns, _rules, _segments = _load(config_dir)
    console.print(f"[green]✓[/green] {len(campaigns)} campaign(s) valid: "
                  f"{', '.join(sorted(campaigns)) or 'none'}", highlight=False)


@campaign_cli.command("plan")
def plan_command(campaign_id: str, config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP)) -> None:
    """Dry run, sends nothing: audience, split by phase and variant, SMS size, duration."""
    from pipeline.rules.loader import load_ruleset
    from pipeline.rules.render import render
    from pipeline.sender.limits import load_limits
    from pipeline.sms.encoding import segment_count

    settings, campaigns, rules, segments = _load(config_dir)
    campaign = _campaign(campaigns, campaign_id)
    variants = campaign.variants or rules[campaign.rule]
    folder = config_dir or settings.config_dir
    limits = load_limits(folder / "limits.yaml")
    lane_caps = limits.frequency_caps.get("marketing")
    now_ms = int(time.time() * 1000)
    client = _client(settings)
    try:
        members = audience(client, segments, campaign, now_ms)
        checks = reachable(client, segments, campaign, now_ms, limits.allowed_regions,
                           lane_caps.caps if lane_caps else ())
    finally:
        client.close()
    split: dict[tuple[str, str | None], int] = {}
    for customer_id, _zone in members:
        key = assign(campaign, variants, customer_id)
        split[key] = split.get(key, 0) + 1
    table = Table(title=f"Campaign {campaign.id}: {len(members):,} in the audience "
                        f"({campaign.audience.segment}"
                        f"{' minus ' + ', '.join(campaign.audience.exclude) if campaign.audience.exclude else ''})",
                  title_justify="left")
    for column in ("phase", "variant", "members", "SMS (example)"):
        table.add_column(column)
    ruleset = load_ruleset(config_dir or settings.config_dir)
    rule = next(r for r in ruleset.rules_for("promotion") if r.id == campaign.rule)
    sample_event = {"event_id": "plan", "customer_id": "plan", "occurred_at_ms": 0,
                    "source": "plan", "attributes": {}, "campaign_id": campaign.id,
                    "promo_code": None, "discount_percent": None, "valid_until": None,
                    "landing_url": None, **campaign.promotion}
    from pipeline.sender.content import ContentRules

    price = ContentRules.load(folder / "content.yaml").cost_per_segment
    sizes, segments_of = {}, {}
    for v in rule.variants:
        text = render(ruleset.templates[v.template], event=sample_event,
                      customer={"first_name": "Анна", "locale": "ru", "segments": [],
                                "attributes": {}, "country": "RU"},
                      rule=rule, default_locale=ruleset.settings.default_locale,
                      limits=ruleset.settings.render).text
        size = segment_count(text)
        sizes[v.name] = f"{size.encoding}, {size.segments} segment(s)"
        segments_of[v.name] = size.segments
    for (phase, variant), n in sorted(split.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        table.add_row(phase, variant or ("—" if phase == "holdout" else "the winner"), f"{n:,}",
                      sizes.get(variant or "", "") if variant else "")
    console.print(table)
    sendable = sum(n for (phase, _v), n in split.items() if phase != "holdout")
    if campaign.budget.max_messages is not None:
        sendable = min(sendable, campaign.budget.max_messages)
    rate = campaign.pacing.rate_per_s(len(members))
    hours = sendable / rate / 3600 if rate else 0.0
    window = (f", only {campaign.window.start}–{campaign.window.end} local time (longer)"
              if campaign.window else "")
    console.print(f"to send: {sendable:,} messages at {rate * 60:,.0f}/min ≈ {hours:.1f} h of "
                  f"sending{window}, plus the evaluation wait of {campaign.test.evaluate_after}; "
                  f"variant sizes: " + "; ".join(f"{k}: {v}" for k, v in sizes.items()),
                  highlight=False)
    console.print(_checks_table(checks, len(members)))
    fit = checks.get("opted_in", 0) - checks.get("capped", 0)
    share = fit / len(members) if members else 0.0
    expected = int(sendable * share)
    most = max(segments_of.values(), default=1)
    console.print(f"about {expected:,} messages go out ({share:.0%} of the members pass the "
                  f"checks); cost: about {expected * most * price:,.2f} at {price:g} a segment "
                  f"({most} segment(s) for the longest variant; config/content.yaml)",
                  highlight=False)
    quiet = limits.quiet_hours.get("marketing")
    console.print("when it sends, the sender checks each message again (consent, caps, dedup)"
                  + (f" and holds it in the recipient's quiet hours "
                     f"{quiet.start_min // 60:02d}:{quiet.start_min % 60:02d}–"
                     f"{quiet.end_min // 60:02d}:{quiet.end_min % 60:02d}"
                     if quiet else ""), highlight=False)


def _checks_table(checks: dict[str, int], members: int) -> Table:
    """The audience through the sender's checks, each row what the one above leaves."""
    table = Table(title="Through the sender's checks (now)", title_justify="left")
    for column, justify in (("check", "left"), ("members", "right"), ("left", "right"),
                            ("outcome", "left")):
        table.add_column(column, justify=justify)
    left = members
    steps = (("invalid_number", "number is not a valid number", "rejected invalid_number"),
             ("not_mobile", "number is not a mobile", "rejected not_mobile"),
             ("country_not_allowed", "region outside allowed_regions", "rejected country_not_allowed"))
    for key, label, outcome in steps:
        left -= checks.get(key, 0)
        table.add_row(label, f"-{checks.get(key, 0):,}", f"{left:,}", outcome)
    opted_in = checks.get("opted_in", 0)
    table.add_row("no marketing opt-in", f"-{left - opted_in:,}", f"{opted_in:,}",
                  "suppressed no_marketing_consent")
    capped = checks.get("capped", 0)
    table.add_row("at a frequency cap now", f"-{capped:,}", f"{opted_in - capped:,}",
                  "suppressed frequency_cap")
    return table


@campaign_cli.command("start")
def start_command(campaign_id: str, config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP)) -> None:
    """Freeze the audience now and start the campaign (once)."""
    from pipeline.campaigns.runner import CampaignError, start_campaign

    settings, campaigns, rules, segments = _load(config_dir)
    campaign = _campaign(campaigns, campaign_id)
    client = _client(settings)
    try:
        members = audience(client, segments, campaign, int(time.time() * 1000))
    finally:
        client.close()
    try:
        phases = start_campaign(settings, campaign, campaign.variants or rules[campaign.rule], members)
    except CampaignError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    console.print(f"campaign {campaign_id} started: {len(members):,} members frozen "
                  f"({', '.join(f'{k} {v:,}' for k, v in sorted(phases.items()))}); "
                  f"a `rassylka campaign worker` sends it", highlight=False)


def _command(name: str, help_text: str) -> None:
    def command(campaign_id: str) -> None:
        from pipeline.campaigns.runner import read_latest, send_command
        from pipeline.topics import CAMPAIGN_CONTROL

        settings = Settings.from_env()
        if campaign_id not in read_latest(settings, CAMPAIGN_CONTROL):
            err_console.print(f"[red]campaign {campaign_id} was never started[/red]", highlight=False)
            raise typer.Exit(1)
        send_command(settings, campaign_id, name)
        console.print(f"{name} sent to campaign {campaign_id}", highlight=False)

    command.__doc__ = help_text
    campaign_cli.command(name)(command)


_command("pause", "Stop sending until `resume` (the worker keeps its place).")
_command("resume", "Go on sending a paused campaign.")
_command("cancel", "Stop the campaign for good.")


@campaign_cli.command("status")
def status_command(campaign_id: str) -> None:
    """Where a campaign is: status, phase, sent per phase, the decision and its numbers."""
    from pipeline.campaigns.runner import read_latest
    from pipeline.topics import CAMPAIGN_CONTROL, CAMPAIGN_PROGRESS

    settings = Settings.from_env()
    state = read_latest(settings, CAMPAIGN_PROGRESS).get(campaign_id)
    started = read_latest(settings, CAMPAIGN_CONTROL).get(campaign_id)
    if started is None:
        err_console.print(f"[red]campaign {campaign_id} was never started[/red]", highlight=False)
        raise typer.Exit(1)
    if state is None:
        console.print(f"campaign {campaign_id}: started, not picked up by a worker yet "
                      f"(last command: {started.get('command')})", highlight=False)
        return
    console.print(f"campaign {campaign_id}: [bold]{state['status']}[/bold], phase {state['phase']}"
                  f"{' — ' + state['reason'] if state.get('reason') else ''}", highlight=False)
    table = Table(title="Sent", title_justify="left")
    table.add_column("phase")
    table.add_column("members")
    table.add_column("sent")
    for phase, n in sorted((started.get("phases") or {}).items()):
        table.add_row(phase, f"{n:,}", f"{state['sent'].get(phase, 0):,}")
    console.print(table)
    decision = state.get("decision")
    if decision:
        result = Table(title=f"Decision: {decision['action']} → {decision.get('winner') or 'none'}",
                       title_justify="left")
        for column in ("variant", "targeted", "delivered", decision["metric"] + "s",
                       "opt-outs", "failed", "P(best)"):
            result.add_column(column)
        for name, v in sorted(decision["inputs"].get("variants", {}).items()):
            result.add_row(name, str(v.get("targeted")), str(v.get("delivered")),
                           str(v.get("successes")), str(v.get("opt_outs")), str(v.get("failed")),
                           f"{decision['probabilities'].get(name, 0):.3f}")
        console.print(result)
        console.print(decision["reason"], highlight=False)


@campaign_cli.command("report")
def report_command(campaign_id: str,
                   output: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """The funnel by phase and variant from ClickHouse: members, sent, delivered, clicked,
    converted, revenue, opt-outs and cost (the holdout: members only, for the lift)."""
    from pipeline.analytics.report import render_table
    from pipeline.campaigns.funnel import campaign_funnel

    settings = Settings.from_env()
    client = _client(settings)
    try:
        rows = campaign_funnel(client, campaign_id)
    finally:
        client.close()
    if output == "json":
        print(json.dumps(rows, default=float))
        return
    if not rows:
        err_console.print(f"[yellow]no members of campaign {campaign_id} in ClickHouse yet "
                          f"(the sink stores campaigns.audience)[/yellow]", highlight=False)
        raise typer.Exit(1)
    console.print(render_table(rows, title=f"Campaign {campaign_id} by phase and variant "
                                           f"(ClickHouse)"))


@campaign_cli.command("worker")
def worker_command(worker_id: str = typer.Option("0", help="Names its Kafka transactions."),
                   config_dir: Path = typer.Option(None, help=CONFIG_DIR_HELP),
                   loglevel: str = typer.Option("info", help="Python log level."),
                   metrics_port: int = typer.Option(
                       0, envvar="RASSYLKA_METRICS_PORT",
                       help="Serve /metrics, /healthz and /readyz on this port (0: off).")) -> None:
    """Run the campaign worker: campaigns (fan out, decide, roll out), bandit weights, follow-ups."""
    from pipeline import metrics
    from pipeline.campaigns.followups import FollowUps
    from pipeline.campaigns.learning import BanditLearner
    from pipeline.campaigns.runner import CampaignRunner
    from pipeline.errors import ConfigError
    from pipeline.releases import LiveConfig
    from pipeline.rules.loader import load_ruleset
    from pipeline.topics import create_topics

    logging.getLogger().setLevel(loglevel.upper())
    settings = Settings.from_env()
    if config_dir:
        settings = replace(settings, config_dir=config_dir)
    health = metrics.Health()
    metrics.serve(metrics_port, health)
    create_topics(settings)
    live = LiveConfig(settings, f"campaigns-{worker_id}")
    metrics.set_config_stamp(live.stamp)
    _env, campaigns, _rules, _segments = _load(live.folder)
    ruleset = load_ruleset(live.folder)
    runner = CampaignRunner(settings, campaigns, worker_id=worker_id,
                            learner=BanditLearner(settings, ruleset),
                            follow_ups=FollowUps(settings, ruleset, worker_id), health=health)

    next_check = 0.0

    def reconfigure(runner: CampaignRunner) -> None:
        nonlocal next_check
        if time.monotonic() < next_check:
            return
        next_check = time.monotonic() + live.check_every_s
        change = live.changed()
        if change is None:
            return
        folder, stamp = change
        try:
            runner.campaigns = load_campaigns(folder)
            runner.learner = BanditLearner(settings, load_ruleset(folder))
        except ConfigError as exc:
            logging.getLogger(__name__).error("config %s not applied: %s", stamp,
                                              "; ".join(exc.problems[:5]))
            return
        metrics.set_config_stamp(stamp)
        logging.getLogger(__name__).info(
            "config %s applied: campaigns and bandit rules (follow-up rules at the next start; "
            "started campaigns keep their definition)", stamp)

    runner.reconfigure = reconfigure
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())
    runner.run()
    console.print(json.dumps({cid: r.state["status"] for cid, r in runner.running.items()}),
                  highlight=False)
