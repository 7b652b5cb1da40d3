"""The template sandbox: what a template may do while it renders, for how long, how much.

Jinja2's immutable sandbox already blocks attribute escapes (`__class__`) and mutation.
On top of it, every render runs under a `budget` (a CPU-time deadline) and nothing a
template does may build a large value in one step:

* the deadline is checked as loops go (each `{% for %}` iterates through
  `SmsSandbox.sms_loop`, checking every 16th item) and on every attribute and item
  access, call, operator, filter, `~` and printed value, so even a loop that prints
  nothing stops within the budget;
* repetition (`*`), `+`, `~`, `%`-formatting, `str.format`, `join`, `replace`, block
  capture (`{% set x %}...`) and integer powers are checked *before* they build their
  result: nothing over `MAX_BUILD` characters or items, no format field wider than
  `MAX_FORMAT_WIDTH`, no integer over `MAX_INT_BITS` bits;
* only the filters in `FILTERS` and the methods in `METHODS` exist; other callables
  (Jinja's `self`, `loop.cycle`, macros, `cycler`...) cannot be called;
* only text and numbers can be printed or joined into text: a mapping, a list, `None`,
  a boolean or a Jinja object never reaches an SMS as its Python repr.

A violation raises a `RenderError` subclass whose `reason` says which limit it hit.
"""

from __future__ import annotations

import functools
import gc
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.visitor import NodeTransformer

from pipeline.errors import PermanentError

MAX_BUILD = 100_000
"""Largest string or list (characters or items) one operation may build or take in."""
MAX_FORMAT_WIDTH = 100
"""Widest field and highest precision `%`-formatting and `str.format` may ask for."""
MAX_INT_BITS = 4096
"""Largest integer arithmetic may produce (about 1,200 digits)."""
MAX_POWER = 64
"""Largest exponent of `**`."""

TEXT_FILTERS: frozenset[str] = frozenset(
    {"lower", "upper", "title", "capitalize", "trim", "truncate", "wordcount", "urlencode"}
)
"""Jinja filters that turn their input into text: the input must be text or a number."""
DATA_FILTERS: frozenset[str] = frozenset(
    {
        "abs",
        "count",
        "default",
        "d",
        "dictsort",
        "first",
        "float",
        "int",
        "items",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "sort",
        "unique",
    }
)
"""Jinja filters that work on data without turning arbitrary values into text."""
BOUNDED_FILTERS: frozenset[str] = frozenset({"join", "replace", "format"})
"""Jinja filters that build text from several values; checked before they build it."""
HELPER_FILTERS: tuple[str, ...] = ("money", "date", "datetime")
"""The project's own filters (`pipeline.rules.render`)."""
FILTERS: frozenset[str] = TEXT_FILTERS | DATA_FILTERS | BOUNDED_FILTERS | set(HELPER_FILTERS)
"""Every filter a template may use; the others do not exist in the environment."""

TEXT_METHODS: frozenset[str] = frozenset(
    {
        "capitalize",
        "count",
        "endswith",
        "find",
        "format",
        "format_map",
        "isalnum",
        "isalpha",
        "isdigit",
        "islower",
        "isspace",
        "isupper",
        "join",
        "lower",
        "lstrip",
        "replace",
        "rsplit",
        "rstrip",
        "split",
        "splitlines",
        "startswith",
        "strip",
        "title",
        "upper",
    }
)
MAPPING_METHODS: frozenset[str] = frozenset({"get", "items", "keys", "values"})
SEQUENCE_METHODS: frozenset[str] = frozenset({"count", "index"})
METHODS: frozenset[str] = TEXT_METHODS | MAPPING_METHODS | SEQUENCE_METHODS
"""Every method a template may call (`event.get('x')`, `event.order_id.upper()`)."""

LOOP_FIELDS: frozenset[str] = frozenset(
    {
        "index",
        "index0",
        "revindex",
        "revindex0",
        "first",
        "last",
        "length",
        "previtem",
        "nextitem",
        "depth",
        "depth0",
    }
)
"""What `loop.<name>` offers inside a `{% for %}`: plain values only."""


# ---------------------------------------------------------------------------- errors


class RenderError(PermanentError):
    """A template could not be rendered for this event and customer; retrying cannot help."""

    reason = "render_error"


class NoLocaleError(RenderError):
    """The template has no text in any locale usable for this customer."""

    reason = "no_locale"


class RenderTimeout(RenderError):
    """The render used up its time budget (a loop too long, or too much work)."""

    reason = "render_timeout"


class RenderTooLarge(RenderError):
    """The text, or a value built on the way to it, is over its size limit."""

    reason = "render_too_large"


class RenderUnsafe(RenderError):
    """The template reached for something a template may not use: Jinja or Python
    internals, a forbidden call, or a value that would print as its Python repr."""

    reason = "render_unsafe"


# ---------------------------------------------------------------------------- budget


@dataclass
class _Budget:
    wall_deadline: float
    cpu_deadline: float
    gc_at_start: float
    timeout_ms: int


_BUDGET: ContextVar[_Budget | None] = ContextVar("rassylka_render_budget", default=None)
_gc_cpu = 0.0  # CPU seconds the garbage collector has used so far (it is not the template's)
_gc_started = 0.0
_gc_watched = False


def _on_gc(phase: str, _info: dict[str, Any]) -> None:
    global _gc_cpu, _gc_started
    if phase == "start":
        _gc_started = time.thread_time()
    else:
        _gc_cpu += max(time.thread_time() - _gc_started, 0.0)


def start_budget(timeout_ms: int) -> Token[_Budget | None]:
    """Give the render that starts now `timeout_ms` of CPU time; pass the result to
    `end_budget` when it is over. Outside any budget (e.g. while templates are being
    compiled) nothing times out. Garbage collection during the render does not count: a
    full collection of a big worker's heap can take longer than a render's budget."""
    global _gc_watched
    if not _gc_watched:
        gc.callbacks.append(_on_gc)
        _gc_watched = True
    seconds = timeout_ms / 1000
    return _BUDGET.set(
        _Budget(time.monotonic() + seconds, time.thread_time() + seconds, _gc_cpu, timeout_ms)
    )


def end_budget(token: Token[_Budget | None]) -> None:
    """Close the budget `start_budget` opened."""
    _BUDGET.reset(token)


@contextmanager
def budget(timeout_ms: int) -> Iterator[None]:
    """The renders inside the block get `timeout_ms` of CPU time between them."""
    token = start_budget(timeout_ms)
    try:
        yield
    finally:
        end_budget(token)


def tick() -> None:
    """Raise RenderTimeout when the current render is over its budget.

    Cheap on the happy path (one monotonic clock read); the thread's CPU clock is read
    only once the wall-clock budget has passed, so waiting for a busy CPU is not counted,
    and neither is garbage collection.
    """
    current = _BUDGET.get()
    if current is not None and time.monotonic() > current.wall_deadline:
        spent_on_gc = _gc_cpu - current.gc_at_start
        if time.thread_time() - spent_on_gc > current.cpu_deadline:
            raise RenderTimeout(f"rendering took more than {current.timeout_ms} ms")


# ---------------------------------------------------------------------------- values


_PLAIN = (str, int, float, Decimal)


def printable(value: Any) -> Any:
    """`value` when a template may print it or join it into text: text or a number.

    None is a RenderError (a template bug: a field is empty); a boolean, a mapping, a
    list or any object is RenderUnsafe (its Python repr would reach the SMS). An
    undefined value raises its own UndefinedError.
    """
    if isinstance(value, _PLAIN) and not isinstance(value, bool):
        return value
    if value is None:
        raise RenderError("the template prints a null value; guard it with {% if %} or `or`")
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError here
        return value
    raise RenderUnsafe(f"the template prints {_kind(value)}, not a text or a number")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    if isinstance(value, bytes | bytearray):
        return "raw bytes"
    return f"a Python object ({type(value).__name__})"


def _check_size(value: Any, what: str) -> None:
    if (
        isinstance(value, Sized)
        and not isinstance(value, jinja2.Undefined)
        and len(value) > MAX_BUILD
    ):
        raise RenderTooLarge(f"{what} has {len(value):,} characters or items (limit {MAX_BUILD:,})")


def _check_total(total: int, what: str) -> None:
    if total > MAX_BUILD:
        raise RenderTooLarge(f"{what} would build {total:,} characters (limit {MAX_BUILD:,})")


def _text_len(value: Any) -> int:
    return len(str(printable(value)))


_PERCENT_FIELD = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<kind>.?)",
    re.S,
)
_SPEC_NUMBER = re.compile(r"\d+")


def percent_format_problem(fmt: str) -> tuple[type[RenderError], str] | None:
    """What is wrong with `fmt` as a `%`-format a template may use, or None.

    Used by the sandbox before it formats, and by `rules validate` on literal formats.
    """
    for field in _PERCENT_FIELD.finditer(fmt):
        kind = field["kind"]
        if kind == "%":
            continue
        if kind in ("r", "a"):
            return RenderUnsafe, f"%{kind} prints a Python representation"
        for number in (field["width"], field["precision"]):
            if number == "*":
                return RenderUnsafe, "a '*' width or precision in a %-format is not allowed"
            if number and int(number) > MAX_FORMAT_WIDTH:
                return (
                    RenderTooLarge,
                    f"the %-format field {field.group(0)!r} is {int(number):,} characters wide "
                    f"(limit {MAX_FORMAT_WIDTH})",
                )
    return None


def format_spec_problem(spec: str) -> tuple[type[RenderError], str] | None:
    """What is wrong with a `str.format` field spec (`{:>10}`), or None."""
    for number in _SPEC_NUMBER.findall(spec):
        if int(number) > MAX_FORMAT_WIDTH:
            return (
                RenderTooLarge,
                f"the format field {{:{spec}}} is {int(number):,} characters wide "
                f"(limit {MAX_FORMAT_WIDTH})",
            )
    return None


def _raise(problem: tuple[type[RenderError], str] | None) -> None:
    if problem is not None:
        error, message = problem
        raise error(message)


def bounded_percent(fmt: str, args: Any) -> str:
    """`fmt % args`, refused before it builds anything too large or prints a repr."""
    tick()
    _check_size(fmt, "the %-format")
    _raise(percent_format_problem(fmt))
    fields = [f for f in _PERCENT_FIELD.finditer(fmt) if f["kind"] != "%"]
    total = len(fmt) + sum(int(f["width"] or 0) + int(f["precision"] or 0) for f in fields)
    if isinstance(args, Mapping) and any(f["key"] is not None for f in fields):
        values = [args[f["key"]] for f in fields if f["key"] is not None]
    elif isinstance(args, tuple):
        values = list(args)
    else:
        values = [args]
    total += sum(_text_len(v) for v in values)
    _check_total(total, "the %-format")
    return fmt % args


class _BoundedFormatter(SandboxedFormatter):
    """`str.format` that refuses `!r`, wide fields, non-text values and big results."""

    def __init__(self, env: jinja2.Environment) -> None:
        super().__init__(env)
        self.built = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a"):
            raise RenderUnsafe(f"!{conversion} in a format prints a Python representation")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        tick()
        _raise(format_spec_problem(format_spec))
        text = super().format_field(printable(value), format_spec)
        self.built += len(text)
        _check_total(self.built, "str.format")
        return text


class _BoundedFormat:
    """What `'...'.format` / `.format_map` is inside a template."""

    def __init__(self, env: jinja2.Environment, fmt: str, is_map: bool) -> None:
        self.env, self.fmt, self.is_map = env, fmt, is_map

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        tick()
        _check_size(self.fmt, "the format string")
        if self.is_map:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one mapping")
            args, kwargs = (), args[0]
        formatter = _BoundedFormatter(self.env)
        return formatter.vformat(self.fmt, args, kwargs)


def bounded_join(items: Any, separator: Any = "") -> str:
    """`separator.join(items)` with every item text or a number and a bounded result."""
    tick()
    separator = str(printable(separator))
    taken = list(_take(items, "the joined list"))
    texts = [str(printable(item)) for item in taken]
    _check_total(sum(map(len, texts)) + len(separator) * max(len(texts) - 1, 0), "join")
    return separator.join(texts)


def bounded_replace(text: Any, old: Any, new: Any, count: Any = None) -> str:
    """`text.replace(old, new, count)`, refused before the result grows too large."""
    tick()
    text, old, new = (str(printable(x)) for x in (text, old, new))
    _check_size(text, "the replaced text")
    hits = (len(text) + 1) if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _check_total(len(text) + hits * max(len(new) - len(old), 0), "replace")
    return text.replace(old, new) if count is None else text.replace(old, new, count)


def _take(items: Any, what: str) -> Iterator[Any]:
    """Iterate `items`, refusing more than MAX_BUILD of them."""
    _check_size(items, what)
    for n, item in enumerate(items, 1):
        if n > MAX_BUILD:
            raise RenderTooLarge(f"{what} has more than {MAX_BUILD:,} items")
        yield item


# ---------------------------------------------------------------------------- guards


def sms_loop(iterable: Any) -> Iterator[Any]:
    """What every `{% for %}` iterates: the items of `iterable`, checking the deadline each."""
    tick()
    _check_size(iterable, "the loop")
    return _ticking(iterable)


def _ticking(iterable: Iterable[Any]) -> Iterator[Any]:
    # Every 16th item is enough: the work between two items that does not tick itself
    # (printing template text) is small and bounded.
    count = 0
    for item in iterable:
        count += 1
        if not count & 15:
            tick()
        yield item


def sms_concat(*parts: Any) -> str:
    """What `a ~ b ~ c` is: text or numbers joined, bounded."""
    tick()
    texts = [str(printable(part)) for part in parts]
    _check_total(sum(map(len, texts)), "'~'")
    return "".join(texts)


def _bounded_concat(chunks: Iterable[str]) -> str:
    """Join the output of a block (`{% set x %}...{% endset %}`, `{% filter %}`), bounded."""
    out: list[str] = []
    total = 0
    for chunk in chunks:
        tick()
        total += len(chunk)
        _check_total(total, "a block")
        out.append(chunk)
    return "".join(out)


_GUARDS = (sms_loop, sms_concat)


class _LoopAndConcatGuard(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = _guard_call("sms_loop", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _guard_call("sms_concat", list(node.nodes), node.lineno)


def guard_loops_and_concat(ast: nodes.Template) -> nodes.Template:
    """Rewrite `ast` so every `{% for %}` iterates through `sms_loop` and every `~` is
    `sms_concat`; called on each template before it is compiled."""
    guarded = _LoopAndConcatGuard().visit(ast)
    assert isinstance(guarded, nodes.Template)
    return guarded


def _guard_call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None, lineno=lineno)


# ---------------------------------------------------------------------------- filters


def _value_index(func: Callable[..., Any]) -> int:
    return 1 if getattr(func, "jinja_pass_arg", None) is not None else 0


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    first = _value_index(func)
    text_input = name in TEXT_FILTERS

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if len(args) > first:
            value = args[first]
            if text_input:
                printable(value)
            _check_size(value, f"the input of |{name}")
        result = func(*args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            _check_size(result, f"the result of |{name}")
        return result

    return guarded


@jinja2.pass_environment
def _join_filter(
    env: jinja2.Environment, value: Any, d: str = "", attribute: str | int | None = None
) -> str:
    items = list(_take(value, "the joined list"))
    if attribute is not None:
        items = list(map(make_attrgetter(env, attribute), items))
    return bounded_join(items, d)


def _replace_filter(s: Any, old: Any, new: Any, count: int | None = None) -> str:
    return bounded_replace(s, old, new, count)


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise TypeError("can't handle positional and keyword arguments at the same time")
    return bounded_percent(str(printable(value)), kwargs or args)


def install_filters(env: jinja2.Environment, helpers: Mapping[str, Callable[..., Any]]) -> None:
    """Replace `env.filters` by the allowed filters, each wrapped with the checks above."""
    allowed: dict[str, Callable[..., Any]] = {
        name: JINJA_FILTERS[name] for name in TEXT_FILTERS | DATA_FILTERS
    }
    allowed.update(helpers)
    env.filters.clear()
    for name, func in allowed.items():
        env.filters[name] = _guard_filter(name, func)
    env.filters["join"] = _join_filter
    env.filters["replace"] = _replace_filter
    env.filters["format"] = _format_filter


# ---------------------------------------------------------------------------- environment


def _method_allowed(obj: Any) -> bool:
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, str):
        return name in TEXT_METHODS
    if isinstance(owner, Mapping):
        return name in MAPPING_METHODS
    if isinstance(owner, list | tuple):
        return name in SEQUENCE_METHODS
    return False


class SmsSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a render budget and bounded value building."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    sms_loop = staticmethod(sms_loop)
    sms_concat = staticmethod(sms_concat)
    concat = staticmethod(_bounded_concat)  # type: ignore[assignment]

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if (
            isinstance(value, types.BuiltinMethodType)
            and value.__name__ in ("format", "format_map")
            and isinstance(value.__self__, str)
        ):
            return _BoundedFormat(self, value.__self__, value.__name__ == "format_map")
        return None

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        tick()
        kwargs.pop("_loop_vars", None)  # Jinja's own bookkeeping, for context.call
        kwargs.pop("_block_vars", None)
        if (
            any(__obj is guard for guard in _GUARDS)
            or isinstance(__obj, _BoundedFormat | jinja2.Undefined)  # an Undefined raises
        ):
            return __obj(*args, **kwargs)
        if not isinstance(__obj, types.BuiltinMethodType) or not _method_allowed(__obj):
            name = getattr(__obj, "__name__", type(__obj).__name__)
            raise RenderUnsafe(f"calling {name}() is not allowed in a template")
        owner, name = __obj.__self__, __obj.__name__
        if isinstance(owner, str) and name == "join":
            return bounded_join(*args, owner, **kwargs)
        if isinstance(owner, str) and name == "replace":
            return bounded_replace(owner, *args, **kwargs)
        result = __obj(*args, **kwargs)
        if isinstance(result, str | list | tuple):
            _check_size(result, f"the result of .{name}()")
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        if operator == "%" and isinstance(left, str):
            return bounded_percent(left, right)
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _check_total(len(left) + len(right), "'+'")
        elif operator == "**":
            _check_power(left, right)
        return super().call_binop(context, operator, left, right)


def _check_repeat(left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(count, int):
            _check_total(len(seq) * count, "repetition")
    if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise RenderTooLarge(f"a product of over {MAX_INT_BITS} bits")


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(exponent, int | float) and abs(exponent) > MAX_POWER:
        raise RenderTooLarge(f"power {exponent} exceeds {MAX_POWER}")
    if _is_int(base) and _is_int(exponent) and base.bit_length() * exponent > MAX_INT_BITS:
        raise RenderTooLarge(f"a power of over {MAX_INT_BITS} bits")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finalize(value: Any) -> Any:
    """The `finalize` hook: every `{{ ... }}` printed must be text or a number."""
    tick()
    return printable(value)
