"""Static checks of a template's syntax tree: what `rules validate` refuses before any render.

The sandbox (`pipeline.rules.sandbox`) enforces the same limits while rendering, whatever
the template; these checks name the offending construct and its line up front, so a
hostile or careless template never reaches a running router. `check_template` finds what
the tree alone shows; `field_uses` lists the loops over and prints of `event.<field>` /
`customer.<field>`, which the loader checks against each event's Avro types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from string import Formatter

from jinja2 import nodes

from pipeline.rules.sandbox import (
    FILTERS,
    LOOP_FIELDS,
    MAX_BUILD,
    MAX_POWER,
    METHODS,
    format_spec_problem,
    percent_format_problem,
)

MAX_LOOP_DEPTH = 2
"""Deepest nesting of `{% for %}` loops a template may have."""

JINJA_NAMES: frozenset[str] = frozenset(
    {
        "self",
        "range",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
        "namespace",
        "caller",
        "varargs",
        "kwargs",
    }
)
"""Jinja's own globals and special names: none of them is available to an SMS template."""

_STATEMENTS: dict[type[nodes.Node], str] = {
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Include: "{% include %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
}
_CONTEXT_ROOTS = ("event", "customer", "rule")


@dataclass(frozen=True)
class FieldUse:
    """`<root>.<field>` used as a loop's iterable (`loop`) or printed (`print`) at `line`."""

    root: str
    field: str
    use: str
    line: int


def check_template(ast: nodes.Template) -> list[tuple[int, str]]:
    """(line, problem) for every construct in `ast` a template may not use."""
    checker = _Checker()
    checker.walk(ast, depth=0)
    return sorted(checker.problems)


def field_uses(ast: nodes.Template) -> Iterator[FieldUse]:
    """Every loop over, and print of, a field of `event`, `customer` or `rule`."""
    for loop in ast.find_all(nodes.For):
        ref = _field_ref(loop.iter)
        if ref:
            yield FieldUse(*ref, "loop", loop.lineno)
    for output in ast.find_all(nodes.Output):
        for child in output.nodes:
            ref = _field_ref(child)
            if ref:
                yield FieldUse(*ref, "print", child.lineno)


def _field_ref(node: nodes.Node) -> tuple[str, str] | None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        if node.node.name in _CONTEXT_ROOTS:
            return node.node.name, node.attr
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name in _CONTEXT_ROOTS
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.node.name, node.arg.value
    return None


class _Checker:
    def __init__(self) -> None:
        self.problems: set[tuple[int, str]] = set()
        self.loop_names_ok: set[int] = set()  # ids of `loop` names used as loop.<field>
        self.methods_ok: set[int] = set()  # ids of Getattr nodes already judged

    def problem(self, node: nodes.Node, message: str) -> None:
        self.problems.add((node.lineno, message))

    def walk(self, node: nodes.Node, depth: int) -> None:
        check = getattr(self, f"check_{type(node).__name__}", None)
        if check is not None:
            check(node, depth)
        if isinstance(node, nodes.For):
            self.walk(node.target, depth + 1)
            self.walk(node.iter, depth)
            for child in (*node.body, *node.else_, *([node.test] if node.test else [])):
                self.walk(child, depth + 1)
            return
        for child in node.iter_child_nodes():
            self.walk(child, depth)

    # -- statements -------------------------------------------------------------------

    def check_For(self, node: nodes.For, depth: int) -> None:
        if node.recursive:
            self.problem(node, "recursive loops are not allowed")
        if depth + 1 > MAX_LOOP_DEPTH:
            self.problem(
                node,
                f"loops nested {depth + 1} deep (at most {MAX_LOOP_DEPTH}): too slow to render",
            )
        if isinstance(node.iter, nodes.Const) and isinstance(node.iter.value, str):
            self.problem(node, "a loop over a text iterates its characters")

    def check_Output(self, node: nodes.Output, depth: int) -> None:
        for child in node.nodes:
            if isinstance(child, nodes.Name) and child.name in _CONTEXT_ROOTS:
                self.problem(
                    child,
                    f"prints the whole '{child.name}': its Python form would be sent; print a "
                    f"field such as {child.name}.{'order_id' if child.name == 'event' else 'id'}",
                )

    def generic_statement(self, node: nodes.Node, depth: int) -> None:
        self.problem(node, f"{_STATEMENTS[type(node)]} is not allowed in an SMS template")

    check_Macro = check_CallBlock = check_Include = check_Import = generic_statement
    check_FromImport = check_Extends = check_Block = generic_statement

    # -- names and attributes ---------------------------------------------------------

    def check_Name(self, node: nodes.Name, depth: int) -> None:
        if node.ctx != "load":
            if node.name in JINJA_NAMES or node.name == "loop":
                self.problem(node, f"'{node.name}' is a Jinja name and cannot be assigned")
            return
        if node.name == "self":
            self.problem(
                node, "'self' is Jinja's template object: printing it would send Python internals"
            )
        elif node.name in JINJA_NAMES:
            self.problem(
                node,
                f"'{node.name}' is a Jinja built-in that SMS templates may not use "
                f"(a template sees only {', '.join(_CONTEXT_ROOTS)})",
            )
        elif node.name == "loop" and depth > 0 and id(node) not in self.loop_names_ok:
            self.problem(
                node, f"use 'loop' only as loop.<field> ({', '.join(sorted(LOOP_FIELDS))})"
            )

    def check_Getattr(self, node: nodes.Getattr, depth: int) -> None:
        if node.attr.startswith("_"):
            self.problem(node, f"attribute '{node.attr}' is Python-internal")
        if isinstance(node.node, nodes.Name) and node.node.name == "loop":
            self.loop_names_ok.add(id(node.node))
            self.methods_ok.add(id(node))
            if node.attr not in LOOP_FIELDS and not node.attr.startswith("_"):
                self.problem(
                    node,
                    f"loop.{node.attr} is not available (loop offers "
                    f"{', '.join(sorted(LOOP_FIELDS))})",
                )

    def check_Getitem(self, node: nodes.Getitem, depth: int) -> None:
        if (
            isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
            and node.arg.value.startswith("_")
        ):
            self.problem(node, f"attribute '{node.arg.value}' is Python-internal")

    # -- calls, filters, operators ----------------------------------------------------

    def check_Call(self, node: nodes.Call, depth: int) -> None:
        func = node.node
        if not isinstance(func, nodes.Getattr):
            if not (isinstance(func, nodes.Name) and func.name in JINJA_NAMES | {"loop"}):
                self.problem(node, "only methods such as event.get(...) can be called")
            return
        if id(func) in self.methods_ok:
            return
        if func.attr not in METHODS:
            self.problem(
                node,
                f"calling .{func.attr}() is not allowed (methods: {', '.join(sorted(METHODS))})",
            )
        elif (
            func.attr in ("format", "format_map")
            and isinstance(func.node, nodes.Const)
            and isinstance(func.node.value, str)
        ):
            self._check_str_format(node, func.node.value)

    def _check_str_format(self, node: nodes.Node, fmt: str) -> None:
        try:
            fields = list(Formatter().parse(fmt))
        except ValueError as exc:
            self.problem(node, f"bad format string {fmt!r}: {exc}")
            return
        for _text, _name, spec, conversion in fields:
            if conversion in ("r", "a"):
                self.problem(node, f"!{conversion} in a format prints a Python representation")
            problem = format_spec_problem(spec or "")
            if problem:
                self.problem(node, problem[1])

    def check_Filter(self, node: nodes.Filter, depth: int) -> None:
        if node.name not in FILTERS:
            self.problem(
                node,
                f"filter '{node.name}' is not allowed (filters: {', '.join(sorted(FILTERS))})",
            )
        elif (
            node.name == "format"
            and isinstance(node.node, nodes.Const)
            and isinstance(node.node.value, str)
        ):
            self._check_percent(node, node.node.value)

    def check_Mod(self, node: nodes.Mod, depth: int) -> None:
        if isinstance(node.left, nodes.Const) and isinstance(node.left.value, str):
            self._check_percent(node, node.left.value)

    def _check_percent(self, node: nodes.Node, fmt: str) -> None:
        problem = percent_format_problem(fmt)
        if problem:
            self.problem(node, problem[1])

    def check_Mul(self, node: nodes.Mul, depth: int) -> None:
        for seq, count in ((node.left, node.right), (node.right, node.left)):
            size = _literal_len(seq)
            if size is not None and isinstance(count, nodes.Const) and _is_int(count.value):
                if size * count.value > MAX_BUILD:
                    self.problem(
                        node,
                        f"repetition builds {size * count.value:,} characters or items "
                        f"(limit {MAX_BUILD:,})",
                    )

    def check_Pow(self, node: nodes.Pow, depth: int) -> None:
        if (
            isinstance(node.right, nodes.Const)
            and isinstance(node.right.value, int | float)
            and abs(node.right.value) > MAX_POWER
        ):
            self.problem(node, f"power {node.right.value} exceeds {MAX_POWER}")


def _literal_len(node: nodes.Node) -> int | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return len(node.value)
    if isinstance(node, nodes.List | nodes.Tuple):
        return len(node.items)
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
