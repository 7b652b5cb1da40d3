"""Sandboxed rendering of SMS templates: one Jinja2 environment, helper filters, locale choice.

Templates are compiled once, when the rule set is loaded (`compile_source`), and rendered
per event with a context of exactly three names: `event` (the event record), `customer`
(the profile record) and `rule` (id, lane, sender_id, priority). Anything that goes wrong
while rendering is a `RenderError`: a permanent failure of that one (event, rule) pair,
never of the worker. Its `reason` says what happened: `render_error` (bad data, undefined
field, filter error), `render_timeout` and `render_too_large` (over the `RenderLimits`,
enforced while rendering) and `render_unsafe` (the template reached for internals or
would print a Python repr). What the sandbox allows is in `pipeline.rules.sandbox`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.exceptions import SecurityError

from pipeline.rules.model import RenderLimits, Rule, Template
from pipeline.rules.sandbox import (
    HELPER_FILTERS,
    NoLocaleError,
    RenderError,
    RenderTimeout,
    RenderTooLarge,
    RenderUnsafe,
    SmsSandbox,
    end_budget,
    finalize,
    guard_loops_and_concat,
    install_filters,
    start_budget,
)

log = logging.getLogger(__name__)

__all__ = [
    "CONTEXT_NAMES",
    "HELPER_FILTERS",
    "RULE_FIELDS",
    "NoLocaleError",
    "RenderError",
    "RenderTimeout",
    "RenderTooLarge",
    "RenderUnsafe",
    "Rendered",
    "build_environment",
    "choose_locale",
    "compile_source",
    "render",
    "tidy",
]

CONTEXT_NAMES: frozenset[str] = frozenset({"event", "customer", "rule"})
"""The only top-level names a template may use."""
RULE_FIELDS: frozenset[str] = frozenset({"id", "lane", "sender_id", "priority"})
"""What `rule.<name>` offers inside a template."""

_LOCALE_KEY = "_render_locale"  # hidden context entry the locale-aware filters read


@dataclass(frozen=True)
class Rendered:
    """The text of one SMS, and which template and locale produced it."""

    text: str
    template_id: str
    locale: str


def build_environment() -> jinja2.Environment:
    """The sandboxed environment templates are compiled in; called once per rule-set load."""
    env = SmsSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=finalize,
        keep_trailing_newline=False,
    )
    env.globals.clear()  # only event/customer/rule exist; validation relies on it
    install_filters(env, {"money": money_filter, "date": date_filter, "datetime": datetime_filter})
    return env


def compile_source(
    env: jinja2.Environment, template_id: str, locale: str, source: str
) -> jinja2.Template:
    """Compile one locale of a template; jinja2.TemplateSyntaxError when it is malformed.

    Every loop and `~` is routed through the sandbox's guards first (see
    `pipeline.rules.sandbox`). The filename carries template id and locale so runtime
    errors can name them.
    """
    filename = _filename(template_id, locale)
    ast = guard_loops_and_concat(
        env.parse(source, name=f"{template_id}:{locale}", filename=filename)
    )
    ast.set_environment(env)
    code = env.compile(ast, name=f"{template_id}:{locale}", filename=filename)
    return env.template_class.from_code(env, code, env.make_globals(None), None)


def _filename(template_id: str, locale: str) -> str:
    return f"config/templates/{template_id}.yaml#{locale}"


# ---------------------------------------------------------------------------- locale


def choose_locale(template: Template, wanted: str | None, default_locale: str) -> str:
    """The locale to render `template` in for a customer who prefers `wanted`.

    Order: the customer's locale (exact, then its language part: 'en-US' -> 'en'), the
    rule set's default locale, then the template's first locale. NoLocaleError when the
    template has none at all.
    """
    available = list(template.compiled or template.locales)
    if not available:
        raise NoLocaleError(f"template {template.id} has no locales")
    if wanted:
        if wanted in available:
            return wanted
        language = re.split(r"[-_]", wanted.strip().lower(), maxsplit=1)[0]
        if language in available:
            return language
    if default_locale in available:
        return default_locale
    return available[0]


# ---------------------------------------------------------------------------- rendering


def render(
    template: Template,
    *,
    event: Mapping[str, Any],
    customer: Mapping[str, Any],
    rule: Rule,
    default_locale: str,
    limits: RenderLimits = RenderLimits(),
) -> Rendered:
    """Render `template` for one event and customer; called by the router per matching rule.

    The render gets `limits.timeout_ms` of CPU time and may produce at most
    `limits.max_chars` characters (after `tidy`); both are enforced while it runs, so a
    hostile template stops early instead of stalling the router. Raises RenderError
    (reason render_error) on undefined names, null values printed or filter errors;
    RenderTimeout, RenderTooLarge and RenderUnsafe (render_timeout, render_too_large,
    render_unsafe) on the limits and the sandbox; NoLocaleError (no_locale) when the
    template has no usable locale. All are permanent for this (event, rule).
    """
    locale = choose_locale(template, customer.get("locale"), default_locale)
    compiled = template.compiled.get(locale)
    if compiled is None:
        raise NoLocaleError(f"template {template.id} has locale {locale} but it is not compiled")
    context = {
        "event": event,
        "customer": customer,
        "rule": {
            "id": rule.id,
            "lane": rule.lane,
            "sender_id": rule.sender_id,
            "priority": rule.priority,
        },
        _LOCALE_KEY: locale,
    }
    where = f"template {template.id} ({locale})"
    chunks = compiled.generate(context)
    deadline = start_budget(limits.timeout_ms)
    try:
        text = _collect(chunks, limits.max_chars)
    except RenderError as exc:  # the subclasses keep their reason
        raise type(exc)(
            f"{where}{_line_of(exc.__traceback__, template.id, locale)}: {exc}"
        ) from exc
    except SecurityError as exc:
        raise RenderUnsafe(
            f"{where}{_line_of(exc.__traceback__, template.id, locale)}: sandbox violation: {exc}"
        ) from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(
            f"{where}{_line_of(exc.__traceback__, template.id, locale)}: undefined: {exc}"
        ) from exc
    except RecursionError as exc:
        raise RenderUnsafe(f"{where}: the template recurses without end") from exc
    except Exception as exc:  # filters and operators raise all kinds on bad data
        raise RenderError(
            f"{where}{_line_of(exc.__traceback__, template.id, locale)}: "
            f"{exc.__class__.__name__}: {exc}"
        ) from exc
    finally:
        chunks.close()
        end_budget(deadline)
    if not text:
        raise RenderError(f"{where}: rendered an empty text")
    return Rendered(text=text, template_id=template.id, locale=locale)


def _collect(chunks: Iterator[str], max_chars: int) -> str:
    """The tidied text of `chunks`, stopping as soon as it is sure to exceed `max_chars`.

    Chunks are kept as they come while they are short; once they add up to more than
    twice the limit they are squeezed (runs of blanks to one, as `tidy` does) and, if
    still over, rendering stops. So an endless stream of output or of blanks never
    piles up in memory, and a normal text is tidied once, at the end.
    """
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > 2 * max_chars:
            squeezed = _squeeze("".join(parts)).lstrip()
            if len(squeezed) > max_chars + 1:  # one trailing blank may still go
                raise RenderTooLarge(f"the text grows past the limit of {max_chars} characters")
            parts, size = [squeezed], len(squeezed)
    text = tidy("".join(parts))
    if len(text) > max_chars:
        raise RenderTooLarge(f"the text has {len(text)} characters (limit {max_chars})")
    return text


def _line_of(tb: TracebackType | None, template_id: str, locale: str) -> str:
    """', line N' of the innermost template frame in `tb`, or '' when there is none."""
    filename = _filename(template_id, locale)
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f", line {line}" if line else ""


_SPACES = re.compile(r"[ \t\f\v\r]+")
_BREAKS = re.compile(r" ?\n[ \n]*")


def tidy(text: str) -> str:
    """Strip the text, collapse runs of spaces to one space and runs of line breaks to one."""
    return _squeeze(text).strip()


def _squeeze(text: str) -> str:
    return _BREAKS.sub("\n", _SPACES.sub(" ", text))


# ---------------------------------------------------------------------------- filters

_ZERO_DECIMAL = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "PYG", "XAF", "XOF"})
_THREE_DECIMAL = frozenset({"BHD", "KWD", "OMR", "JOD", "TND", "IQD", "LYD"})
_RU_SYMBOLS = {"RUB": "₽", "USD": "$", "EUR": "€", "KZT": "₸", "BYN": "Br", "CNY": "¥"}
_EN_PREFIX_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _locale_of(ctx: jinja2.runtime.Context, locale: str | None) -> str:
    chosen = locale or ctx.get(_LOCALE_KEY) or "ru"
    return re.split(r"[-_]", str(chosen).lower(), maxsplit=1)[0]


def format_money(amount_minor: int | str, currency: str = "RUB", locale: str = "ru") -> str:
    """'1 234,50 ₽' (ru), '$1,234.50' or '1,234.50 RUB' (en); whole amounts drop the cents."""
    amount = int(amount_minor)
    code = str(currency or "RUB").upper()
    exponent = 0 if code in _ZERO_DECIMAL else 3 if code in _THREE_DECIMAL else 2
    sign = "-" if amount < 0 else ""
    units, minor = divmod(abs(amount), 10**exponent)
    ru = locale != "en"
    grouped = f"{units:,}".replace(",", " " if ru else ",")
    number = grouped if minor == 0 else f"{grouped}{',' if ru else '.'}{minor:0{exponent}d}"
    if ru:
        return f"{sign}{number} {_RU_SYMBOLS.get(code, code)}"
    if code in _EN_PREFIX_SYMBOLS:
        return f"{sign}{_EN_PREFIX_SYMBOLS[code]}{number}"
    return f"{sign}{number} {code}"


@jinja2.pass_context
def money_filter(
    ctx: jinja2.runtime.Context,
    amount_minor: int | str,
    currency: str = "RUB",
    locale: str | None = None,
) -> str:
    """`{{ event.amount_minor | money(event.currency) }}`; locale defaults to the rendered one."""
    return format_money(amount_minor, currency, _locale_of(ctx, locale))


def _parse_when(value: str | date | datetime) -> date | datetime:
    if isinstance(value, datetime | date):
        return value
    text = str(value).strip()
    if "T" in text or " " in text:
        return datetime.fromisoformat(text)
    return date.fromisoformat(text)


def _to_customer_zone(ctx: jinja2.runtime.Context, moment: datetime) -> datetime:
    """Aware datetimes are shown in the customer's time zone when the profile names one."""
    if moment.tzinfo is None:
        return moment
    customer = ctx.get("customer") or {}
    zone = customer.get("time_zone") if isinstance(customer, Mapping) else None
    if not zone:
        return moment
    try:
        return moment.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        return moment


def format_date(value: str | date | datetime, locale: str = "ru") -> str:
    """'25.11.2026' (ru) or 'Nov 25, 2026' (en) from an ISO date or datetime."""
    day = _parse_when(value)
    if locale == "en":
        return f"{_EN_MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{day.day:02d}.{day.month:02d}.{day.year}"


def format_datetime(value: str | datetime, locale: str = "ru") -> str:
    """'25.11.2026 02:00' (ru) or 'Nov 25, 2026, 2:00 AM' (en) from an ISO datetime."""
    moment = _parse_when(value)
    if not isinstance(moment, datetime):
        return format_date(moment, locale)
    day = format_date(moment, locale)
    if locale == "en":
        hour = moment.hour % 12 or 12
        return f"{day}, {hour}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"
    return f"{day} {moment.hour:02d}:{moment.minute:02d}"


@jinja2.pass_context
def date_filter(ctx: jinja2.runtime.Context, value: str, locale: str | None = None) -> str:
    """`{{ event.due_date | date }}`; aware datetimes first move to the customer's zone."""
    parsed = _parse_when(value)
    if isinstance(parsed, datetime):
        parsed = _to_customer_zone(ctx, parsed)
    return format_date(parsed, _locale_of(ctx, locale))


@jinja2.pass_context
def datetime_filter(ctx: jinja2.runtime.Context, value: str, locale: str | None = None) -> str:
    """`{{ event.starts_at | datetime }}`, in the customer's time zone when known."""
    parsed = _parse_when(value)
    if isinstance(parsed, datetime):
        parsed = _to_customer_zone(ctx, parsed)
    return format_datetime(parsed, _locale_of(ctx, locale))
