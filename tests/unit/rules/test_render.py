"""Sandboxed rendering: personalisation, locale choice, filters, strictness, sandbox escapes."""

from __future__ import annotations

import gc
import time

import pytest

from pipeline.errors import PermanentError
from pipeline.rules.loader import load_bundle
from pipeline.rules.model import RenderLimits, Template
from pipeline.rules.render import (
    NoLocaleError,
    RenderError,
    RenderTimeout,
    RenderTooLarge,
    build_environment,
    choose_locale,
    compile_source,
    format_date,
    format_datetime,
    format_money,
    render,
    tidy,
)
from pipeline.rules.sandbox import FILTERS, end_budget, start_budget, tick
from pipeline.settings import ROOT

PROFILE = {
    "customer_id": "c-1",
    "phone": "+79161234567",
    "country": "RU",
    "locale": "ru",
    "time_zone": "Europe/Moscow",
    "first_name": "Анна",
    "last_name": None,
    "segments": [],
    "attributes": {},
}
SHIPPED = {
    "event_id": "e-1",
    "customer_id": "c-1",
    "occurred_at_ms": 1,
    "source": "shop-web",
    "attributes": {},
    "order_id": "A-1001",
    "status": "shipped",
    "previous_status": "paid",
    "amount_minor": 123_450,
    "currency": "RUB",
    "tracking_url": "https://track.example/A-1001",
    "pickup_point": None,
}


@pytest.fixture(scope="module")
def ruleset():
    from pipeline.rules.loader import read_bundle

    return load_bundle(read_bundle(ROOT / "config"))


def make_template(template_id: str = "t", **locales: str) -> Template:
    env = build_environment()
    return Template(
        id=template_id,
        description="",
        locales=locales,
        compiled={loc: compile_source(env, template_id, loc, src) for loc, src in locales.items()},
    )


def rendered(ruleset, template_id, event, profile):
    rule = ruleset.rule("order_shipped")
    return render(
        ruleset.templates[template_id],
        event=event,
        customer=profile,
        rule=rule,
        default_locale="ru",
    )


def test_personalised_shipped_sms_in_russian(ruleset):
    out = rendered(ruleset, "order_shipped", SHIPPED, PROFILE)
    assert out.locale == "ru" and out.template_id == "order_shipped"
    assert (
        out.text
        == "Анна, заказ №A-1001 передан в доставку. Отследить: https://track.example/A-1001"
    )


def test_english_customer_and_missing_first_name(ruleset):
    out = rendered(
        ruleset,
        "order_shipped",
        SHIPPED | {"tracking_url": None},
        PROFILE | {"locale": "en", "first_name": None},
    )
    assert out.locale == "en"
    assert out.text == "Hello, your order #A-1001 has shipped."


def test_locale_fallback_to_default(ruleset):
    out = rendered(ruleset, "order_shipped", SHIPPED, PROFILE | {"locale": "de"})
    assert out.locale == "ru"
    assert out.text.startswith("Анна, заказ")


def test_choose_locale_order():
    template = make_template(en="x", ru="y")
    assert choose_locale(template, "en", "ru") == "en"
    assert choose_locale(template, "en-GB", "ru") == "en"
    assert choose_locale(template, "EN_us", "ru") == "en"
    assert choose_locale(template, "de", "ru") == "ru"
    assert choose_locale(template, None, "ru") == "ru"
    assert choose_locale(make_template(en="x", kk="y"), "de", "ru") == "en"  # first available
    with pytest.raises(NoLocaleError) as info:
        choose_locale(Template("empty", "", {}), "ru", "ru")
    assert info.value.reason == "no_locale"


def test_helper_filters_in_templates(ruleset):
    event = {
        "event_id": "e-2",
        "customer_id": "c-1",
        "occurred_at_ms": 1,
        "source": "erp",
        "attributes": {},
        "invoice_id": "INV-7",
        "order_id": None,
        "amount_minor": 990_000,
        "currency": "RUB",
        "due_date": "2026-11-25",
        "payment_url": "https://pay.example/7",
    }
    ru = rendered(ruleset, "payment_due_reminder", event, PROFILE)
    assert ru.text == (
        "Напоминаем: до 25.11.2026 нужно оплатить счёт №INV-7 на 9 900 ₽. Оплатить: https://pay.example/7"
    )
    en = rendered(
        ruleset,
        "payment_due_reminder",
        event | {"currency": "USD", "amount_minor": 1250},
        PROFILE | {"locale": "en"},
    )
    assert (
        en.text
        == "Reminder: invoice #INV-7 for $12.50 is due on Nov 25, 2026. Pay here: https://pay.example/7"
    )


def test_promotion_variants_end_with_opt_out(ruleset):
    event = {
        "event_id": "e-3",
        "customer_id": "c-1",
        "occurred_at_ms": 1,
        "source": "crm",
        "attributes": {},
        "campaign_id": "bf",
        "promo_code": "BF20",
        "discount_percent": 20,
        "valid_until": "2026-11-30",
        "landing_url": "https://shop.example/bf",
    }
    for tid in ("promo_discount_a", "promo_discount_b"):
        assert rendered(ruleset, tid, event, PROFILE).text.endswith("Отписка: STOP")
        assert rendered(ruleset, tid, event, PROFILE | {"locale": "en"}).text.endswith(
            "Reply STOP to opt out"
        )


def test_datetimes_are_shown_in_the_customers_time_zone(ruleset):
    event = {
        "event_id": "e-4",
        "customer_id": "c-1",
        "occurred_at_ms": 1,
        "source": "ops",
        "attributes": {},
        "notice_id": "n-1",
        "service": "личный кабинет",
        "starts_at": "2026-11-25T02:00:00+03:00",
        "ends_at": "2026-11-25T04:00:00+03:00",
        "details": None,
    }
    moscow = rendered(ruleset, "service_maintenance", event, PROFILE)
    assert "с 25.11.2026 02:00 до 25.11.2026 04:00." in moscow.text
    yekaterinburg = rendered(
        ruleset, "service_maintenance", event, PROFILE | {"time_zone": "Asia/Yekaterinburg"}
    )
    assert "с 25.11.2026 04:00 до 25.11.2026 06:00." in yekaterinburg.text
    unknown_zone = rendered(
        ruleset, "service_maintenance", event, PROFILE | {"time_zone": "Mars/Base"}
    )
    assert "с 25.11.2026 02:00" in unknown_zone.text


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (123_450, "RUB", "ru", "1 234,50 ₽"),
        (150_000, "RUB", "ru", "1 500 ₽"),
        (5, "RUB", "ru", "0,05 ₽"),
        (1250, "USD", "en", "$12.50"),
        (123_456_789, "USD", "en", "$1,234,567.89"),
        (1250, "RUB", "en", "12.50 RUB"),
        (1250, "EUR", "ru", "12,50 €"),
        (1250, "CHF", "ru", "12,50 CHF"),
        (1500, "JPY", "en", "1,500 JPY"),
        (-1250, "USD", "en", "-$12.50"),
        ("990", "RUB", "ru", "9,90 ₽"),
    ],
)
def test_format_money(amount, currency, locale, expected):
    assert format_money(amount, currency, locale) == expected


def test_format_dates():
    assert format_date("2026-11-25", "ru") == "25.11.2026"
    assert format_date("2026-11-25", "en") == "Nov 25, 2026"
    assert format_datetime("2026-11-25T14:05:00+03:00", "ru") == "25.11.2026 14:05"
    assert format_datetime("2026-11-25T14:05:00+03:00", "en") == "Nov 25, 2026, 2:05 PM"
    assert format_datetime("2026-11-25T00:30:00+00:00", "en") == "Nov 25, 2026, 12:30 AM"


def test_money_filter_uses_the_rendered_locale():
    template = make_template(
        ru="{{ event.amount_minor | money(event.currency) }}",
        en="{{ event.amount_minor | money('USD') }}",
    )
    rule = _rule()
    event = {"amount_minor": 100_050, "currency": "RUB"}
    assert (
        render(
            template, event=event, customer={"locale": "ru"}, rule=rule, default_locale="ru"
        ).text
        == "1 000,50 ₽"
    )
    assert (
        render(
            template, event=event, customer={"locale": "en"}, rule=rule, default_locale="ru"
        ).text
        == "$1,000.50"
    )


def _rule():
    from pipeline.rules.model import CustomerFilter, Rule, Variant

    return Rule(
        "r",
        "order_status_changed",
        (),
        CustomerFilter(),
        (Variant("default", "t", 1),),
        "transactional",
        0,
        60,
        60,
        False,
        "SHOPRU",
        False,
    )


def test_strict_undefined_is_a_render_error():
    template = make_template(ru="Заказ {{ event.order_id }}\nТрек: {{ event.tracking }}")
    with pytest.raises(RenderError) as info:
        render(
            template,
            event={"order_id": "A-1"},
            customer={"locale": "ru"},
            rule=_rule(),
            default_locale="ru",
        )
    assert isinstance(info.value, PermanentError)
    assert info.value.reason == "render_error"
    message = str(info.value)
    assert message.startswith("template t (ru), line 2: undefined:")
    assert "'tracking'" in message


def test_printing_a_null_field_is_a_render_error():
    template = make_template(ru="Трек: {{ event.tracking_url }}")
    with pytest.raises(RenderError, match="prints a null value"):
        render(
            template, event={"tracking_url": None}, customer={}, rule=_rule(), default_locale="ru"
        )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ event.__class__.__init__.__globals__ }}",
        "{{ customer.update({'phone': '1'}) }}",
        "{{ event.attributes.clear() }}",
        "{{ rule.id.__len__() }}",
    ],
)
def test_sandbox_blocks_escapes_and_mutation(source):
    template = make_template(ru=source)
    customer = {"locale": "ru", "phone": "+79160000000"}
    with pytest.raises(RenderError) as info:
        render(
            template,
            event={"attributes": {"a": "b"}},
            customer=customer,
            rule=_rule(),
            default_locale="ru",
        )
    assert "sandbox violation" in str(info.value)
    assert info.value.reason == "render_unsafe"
    assert customer["phone"] == "+79160000000"


@pytest.mark.parametrize("source", ["{{ 'x' * 100000000 }}", "{{ 10 ** 100000 }}"])
def test_sandbox_refuses_memory_bombs(source):
    with pytest.raises(RenderTooLarge):
        render(make_template(ru=source), event={}, customer={}, rule=_rule(), default_locale="ru")


def test_filter_errors_are_render_errors():
    template = make_template(ru="{{ event.due_date | date }}")
    with pytest.raises(RenderError, match=r"template t \(ru\), line 1: ValueError"):
        render(
            template,
            event={"due_date": "next week"},
            customer={},
            rule=_rule(),
            default_locale="ru",
        )


def test_empty_output_is_a_render_error():
    template = make_template(ru="{% if event.x %}text{% endif %}")
    with pytest.raises(RenderError, match="empty text"):
        render(template, event={"x": False}, customer={}, rule=_rule(), default_locale="ru")


def test_tidy_whitespace():
    assert (
        tidy("  Заказ   A-1\t\tотправлен.  \n\n\n  Трек:  x  \n") == "Заказ A-1 отправлен.\nТрек: x"
    )
    assert tidy("one\ntwo") == "one\ntwo"


# ---------------------------------------------------------------------------- limits
# A template must never stall or crash the router: render time and text size are limited
# while rendering, every value-building operation is bounded before it builds, and no
# Python repr of Jinja internals or records ever becomes SMS text.

LONG = "x" * 1000  # three nested loops over it: 10^9 iterations, minutes without a limit


def render_with(source: str, event: dict | None = None, limits: RenderLimits | None = None):
    return render(
        make_template(ru=source),
        event=event if event is not None else {"text": LONG, "attributes": {"a": "b"}},
        customer={"locale": "ru"},
        rule=_rule(),
        default_locale="ru",
        **({"limits": limits} if limits else {}),
    )


def timed_failure(source: str, event: dict | None = None, limits: RenderLimits | None = None):
    started = time.monotonic()
    with pytest.raises(RenderError) as info:
        render_with(source, event, limits)
    return info.value, time.monotonic() - started


@pytest.mark.parametrize(
    "source",
    [
        "{% for a in event.text %}{% for b in event.text %}{% for c in event.text %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        # the same through a variable, which no static check can see through
        "{% set s = event.text %}{% for a in s %}{% for b in s %}{% for c in s %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% for a in event.text %}{% for b in event.text %}{% set x = a ~ b %}{% endfor %}"
        "{% endfor %}",
    ],
)
def test_render_time_is_limited_even_for_loops_that_print_nothing(source):
    error, elapsed = timed_failure(source)
    assert isinstance(error, RenderTimeout) and error.reason == "render_timeout"
    assert str(error).startswith("template t (ru), line 1: rendering took more than 50 ms")
    assert elapsed < 2.0, f"the 50 ms limit let the render run {elapsed:.1f} s"


def test_render_time_limit_is_configurable():
    source = "{% for a in event.text %}{% for b in event.text %}{% endfor %}{% endfor %}"
    assert render_with(source + "ok", {"text": "x" * 300}).text == "ok"  # 90k steps: fine
    error, _ = timed_failure(source + "ok", {"text": "x" * 300}, RenderLimits(timeout_ms=1))
    assert error.reason == "render_timeout" and "more than 1 ms" in str(error)


def test_the_budget_is_cpu_time_of_the_rendering_thread():
    token = start_budget(50)
    try:
        time.sleep(0.1)  # waiting (for the CPU, for I/O) is not rendering
        tick()
        deadline = time.thread_time() + 0.2
        with pytest.raises(RenderTimeout):
            while time.thread_time() < deadline:
                tick()
    finally:
        end_budget(token)
    tick()  # outside any budget nothing times out


def test_garbage_collection_does_not_count_against_a_render():
    """A full collection of a big worker's heap can take longer than a render's budget;
    an ordinary template must not fail because of it."""
    junk = [[i] for i in range(1_000_000)]  # a full collection takes ~100 ms here
    token = start_budget(20)
    try:
        gc.collect()
        gc.collect()
        tick()
    finally:
        end_budget(token)
    del junk


def test_text_size_is_limited_after_tidying():
    assert len(render_with("{{ event.text }}", {"text": "я" * 1000}).text) == 1000
    assert render_with("a{{ event.text }}b", {"text": " \n " * 5000}).text == "a\nb"
    error, _ = timed_failure("{{ event.text }}", {"text": "я" * 1001})
    assert error.reason == "render_too_large" and "limit 1000" in str(error)
    error, _ = timed_failure("{{ event.text }}", {"text": "я" * 200}, RenderLimits(max_chars=160))
    assert error.reason == "render_too_large"


@pytest.mark.parametrize(
    "source",
    [
        "{% for a in event.text %}{% for b in event.text %}xy{% endfor %}{% endfor %}",
        "{% for a in event.text %}{% for b in event.text %}{{ event.text }}{% endfor %}{% endfor %}",
        "{% for a in event.text %}{% for b in event.text %}{{ a }}  {% endfor %}{% endfor %}",
    ],
)
def test_output_size_is_enforced_while_rendering(source):
    """A template that would print megabytes stops at the limit, long before its deadline."""
    error, elapsed = timed_failure(source, limits=RenderLimits(timeout_ms=60_000))
    assert error.reason == "render_too_large", error
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "source",
    [
        '{{ "%02000000d" % 1 }}',  # 2 MB in one operation
        '{{ "%099999999d" % 1 }}',  # 100 MB
        '{{ "%.99999999f" % 1.5 }}',
        '{{ "%099999999d"|format(1) }}',
        "{{ '{:099999999d}'.format(1) }}",
        "{{ '{:{w}}'.format('x', w=99999999) }}",
        "{{ '{0}{0}{0}{0}{0}{0}{0}{0}{0}{0}'.format(event.text * 100) }}",
        "{{ 'x' * 100000000 }}",
        "{{ event.text * 1000 }}",
        "{{ ([event.text] * 1000)|join }}",
        "{{ event.text.join([event.text] * 100) }}",
        "{{ event.text|replace('', event.text) }}",
        "{{ event.text.replace('x', event.text) }}",
        "{% set a = event.text * 99 %}{{ a ~ a }}",
        "{% set a = event.text * 99 %}{{ a + a }}",
        "{% set b %}{% for c in event.text %}{{ event.text }}{% endfor %}{% endset %}{{ b|length }}",
        "{{ 10 ** 100000 }}",
        "{{ (10 ** 60) ** 60 }}",
        "{% set n = 10 ** 64 %}{% set m = n * n * n * n * n * n * n * n %}{{ m * m * m }}",
        "{{ (event.text * 99 ~ event.text ~ 'x')|length }}",
    ],
)
def test_value_bombs_are_refused_before_they_are_built(source):
    error, elapsed = timed_failure(source)
    assert error.reason == "render_too_large", error
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "source",
    [
        "{{ self }}",
        "{{ 'Hi ' ~ self }}",
        "{{ self|upper }}",
        "{{ [self]|join }}",
        "{{ '%s' % self }}",
        "{{ '{}'.format(self) }}",
        "{{ 'x'|replace('x', self) }}",
        "{% for a in event.attributes %}{{ loop }}{% endfor %}",
        "{% for a in event.attributes %}{{ loop.cycle('a', 'b') }}{% endfor %}",
        "{% for a in event.attributes %}{{ loop.__class__ }}{% endfor %}",
        "{{ event }}",
        "{{ event.attributes }}",
        "{{ event.get('attributes') }}",
        "{{ event.get }}",
        "{{ event.attributes.items() }}",
        "{{ 'x' ~ event.attributes }}",
        "{{ event.text.startswith('x') }}",
        "{{ '{!r}'.format('x') }}",
        "{{ '%r' % 'x' }}",
        "{{ 'x'.center(9) }}",
        "{{ 'x'.zfill(9) }}",
        "{{ event.text.encode() }}",
    ],
)
def test_internals_and_python_reprs_never_reach_the_text(source):
    error, _ = timed_failure(source)
    assert error.reason == "render_unsafe", error
    message = str(error)
    assert "<" not in message and "{'" not in message, message  # no repr in the reason either


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("{% for k, v in event.attributes|dictsort %}{{ loop.index }}:{{ k }}={{ v }}{% endfor %}",
         "1:a=b"),
        ("{{ event.attributes.get('a', '-') | upper }} {{ event.attributes.a ~ '!' }}", "B b!"),
        ("{{ '%05.1f' % 3.14159 }} {{ '%s/%d' % ('a', 7) }} {{ '{:>4}|{}'.format('x', 2) }}",
         "003.1 a/7 x|2"),
        ("{{ ['a', 'b']|join(', ') }} {{ event.text|truncate(6, true, '..') }}", "a, b xxxx.."),
        ("{{ event.text|replace('x', 'y')|length }} {{ event.text.upper()[:3] }}", "1000 XXX"),
        ("{{ (event.attributes|list)[0] }}{% if event.text is string %}+{% endif %}", "a+"),
        ("{{ 7 * 6 }} {{ 2 ** 10 }} {{ 10 % 3 }} {{ 'ab' * 3 }}", "42 1024 1 ababab"),
    ],
)
def test_ordinary_templates_still_render(source, text):
    assert render_with(source).text == text


def test_only_allowed_filters_exist():
    env = build_environment()
    assert set(env.filters) == set(FILTERS)
    assert not {"center", "indent", "wordwrap", "pprint", "string", "tojson", "attr"} & set(FILTERS)
