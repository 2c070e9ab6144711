"""The Jinja2 environment policy templates run in: sandboxed, and bounded in time and size.

Jinja's sandbox stops a template from reaching Python internals, but not from burning the
machine: ``{{ serial|center(10**9) }}`` allocates a gigabyte, ``'a' * 10**9`` the same, ``10**10**9``
computes forever, and two nested ``range(10**5)`` loops take minutes. A policy is written by IT,
but it is rendered once per device of a 100,000-device fleet, so one careless template must fail
with a ``file:line`` error naming the field and the device instead of filling the disk.

Every rendering of one value gets a :class:`Budget`:

* :data:`MAX_OUTPUT_CHARS`: no string, list or rendered value may grow beyond it. Operations that
  can make large values from small ones (``*``, ``+``, ``~``, ``**``, ``%``, ``center``, ``indent``,
  ``wordwrap``, ``replace``, ``join``, ``format`` and the ``str`` methods of the same kind) are checked
  *before* they run, from their arguments, so the allocation never happens; every other filter
  and call is checked after it returns.
* :data:`MAX_STEPS`: loop iterations, calls and filters together; deterministic, so a template
  fails or passes the same way on every machine.
* :data:`MAX_PRODUCED_CHARS`: all characters made along the way, so a loop cannot allocate
  gigabytes in pieces that are each small.
* :data:`MAX_SECONDS`: a wall-clock backstop, checked at every step, for cost not foreseen above.

Going over any of them raises :class:`TemplateBudgetError` (a Jinja ``SecurityError``), which the
renderer reports like any other template error.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .models import unencodable_text

MAX_OUTPUT_CHARS = 65_536
"""Longest value a template may render, or build along the way (string length, list items).
A managed setting is at most a few kilobytes; an OTLP header line a few hundred bytes."""
MAX_STEPS = 100_000
"""Loop iterations plus calls plus filters, per rendered value."""
MAX_PRODUCED_CHARS = 4_000_000
"""Characters produced by all checked operations of one rendered value together."""
MAX_INT_BITS = 4096
"""Largest integer a template may compute (about 1,233 decimal digits)."""
MAX_TEMPLATE_DEPTH = 100
"""How deeply a template's syntax may nest; Jinja's parser and code generator recurse per level."""
MAX_SECONDS = 2.0
"""Wall-clock backstop per rendered value; the limits above stop every known expensive template
long before it."""


class TemplateBudgetError(SecurityError):
    """A template went over one of the limits of this module."""


class Budget:
    """What one rendering of one value has spent so far."""

    def __init__(self) -> None:
        self.steps = 0
        self.produced = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise TemplateBudgetError(f"template takes more than {MAX_STEPS:,} steps (loop iterations, calls "
                                      "and filters); simplify it")
        if not self.steps & 255 and time.monotonic() > self.deadline:  # the clock every 256 steps: cheap
            raise TemplateBudgetError(f"template ran longer than {MAX_SECONDS:g} s; simplify it")

    def produce(self, size: int) -> None:
        self.produced += size
        if self.produced > MAX_PRODUCED_CHARS:
            raise TemplateBudgetError(f"template builds more than {MAX_PRODUCED_CHARS:,} characters in all; "
                                      "simplify it")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("mdmgen_template_budget", default=None)


def _budget() -> Budget:
    budget = _BUDGET.get()
    if budget is None:  # a template object used outside BoundedTemplate.render (e.g. a macro kept around)
        budget = Budget()
        _BUDGET.set(budget)
    return budget


def _too_big(what: str) -> TemplateBudgetError:
    return TemplateBudgetError(f"{what} would be longer than {MAX_OUTPUT_CHARS:,} characters; a setting "
                               "value is at most that long")


def size_of(value: Any, limit: int = MAX_OUTPUT_CHARS) -> int:
    """How big ``value`` is (string length, items of containers, recursively), counted only up to
    just past ``limit`` so measuring a huge value costs no more than the limit."""
    total = 0
    pending = [value]
    while pending and total <= limit:
        item = pending.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item) + 1
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item) + 1
            pending.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > MAX_INT_BITS:
                raise TemplateBudgetError(f"template computes an integer larger than 2**{MAX_INT_BITS}")
            total += 1
        else:
            total += 1
    return total


def _checked(value: Any, what: str) -> Any:
    """``value`` if it is within :data:`MAX_OUTPUT_CHARS`; counted as produced."""
    size = len(value) if value.__class__ is str else size_of(value)  # the usual case, without the walk
    if size > MAX_OUTPUT_CHARS:
        raise _too_big(what)
    _budget().produce(size)
    return value


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _as_int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


_NESTED_FORMAT = re.compile(r"\{[^{}]*\{")


def check_format(fmt: Any, args: Iterable[Any]) -> None:
    """Refuse a ``%`` or ``{}`` format whose widths or precisions are over the output limit, written
    in the format (``%999999999d``) or taken from the arguments (``%*d``, ``{:{w}}``)."""
    if not isinstance(fmt, str):
        return
    if any(len(digits) > 6 or int(digits) > MAX_OUTPUT_CHARS for digits in re.findall(r"\d+", fmt)):
        raise _too_big("a formatted value")
    if "*" in fmt or _NESTED_FORMAT.search(fmt):
        for arg in args:
            if abs(_as_int(arg)) > MAX_OUTPUT_CHARS:
                raise _too_big("a formatted value")


def _estimate_replace(text: Any, old: Any, new: Any, count: Any = None) -> int:
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return 0
    times = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    return len(text) + times * len(new)


def _estimate_indent(text: Any, width: Any = 4, *_rest: Any, **_kw: Any) -> int:
    pad = len(width) if isinstance(width, str) else _as_int(width)
    return _length(text) + (str(text).count("\n") + 1) * max(pad, 0) if isinstance(text, str) else 0


def _estimate_wordwrap(text: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                       *_rest: Any, **_kw: Any) -> int:
    if not isinstance(text, str):
        return 0
    joint = len(wrapstring) if isinstance(wrapstring, str) else 1
    return len(text) * (1 + joint)


def _estimate_join(value: Any, d: Any = "", *_rest: Any, **_kw: Any) -> int:
    return _length(value) * (len(d) if isinstance(d, str) else 0)


def _estimate_width(_value: Any, width: Any = 80, *_rest: Any, **_kw: Any) -> int:
    return _as_int(width)


_FILTER_ESTIMATES: dict[str, Callable[..., int]] = {
    "center": _estimate_width,
    "indent": _estimate_indent,
    "wordwrap": _estimate_wordwrap,
    "replace": lambda text, old="", new="", count=None, *_r, **_k: _estimate_replace(text, old, new, count),
    "join": _estimate_join,
    "truncate": lambda text, length=255, *_r, **_k: min(_length(text), _as_int(length)),
    "batch": lambda _value, linecount=1, *_r, **_k: _as_int(linecount),  # pads the last batch to this size
    "slice": lambda _value, slices=1, *_r, **_k: _as_int(slices),
}
"""What a filter's result could grow to, from its arguments, for filters that can make a long
result from short arguments."""

_STR_METHOD_ESTIMATES: dict[str, Callable[..., int]] = {
    "center": lambda s, width=0, *_r: _as_int(width),
    "ljust": lambda s, width=0, *_r: _as_int(width),
    "rjust": lambda s, width=0, *_r: _as_int(width),
    "zfill": lambda s, width=0, *_r: _as_int(width),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * _as_int(tabsize),
    "replace": _estimate_replace,
    "join": lambda s, items=(), *_r: _length(items) * len(s),
}


def _precheck(what: str, estimate: int) -> None:
    if estimate > MAX_OUTPUT_CHARS:
        raise _too_big(what)


def _stepping(items: Iterator[Any]) -> Iterator[Any]:
    budget = _budget()
    for item in items:
        budget.step()
        yield item


def _bounded_result(result: Any, what: str) -> Any:
    """A filter's or call's result, checked; a lazy one (``map``, ``batch``, ``select``) costs a
    step per item, so a later ``list`` or ``join`` cannot drain it without limit."""
    if isinstance(result, Iterator) and not isinstance(result, (str, bytes)):
        return _stepping(result)
    return _checked(result, what)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` checked against the budget: arguments measured first, then the estimate of the
    result for filters that can grow (``center``), then the result itself."""
    if getattr(func, "mdmgen_bounded", False):
        return func
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    estimate = _FILTER_ESTIMATES.get(name)

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        values = args[skip:]
        for arg in (*values, *kwargs.values()):
            _checked(arg, f"the input of filter {name!r}")
        if estimate is not None and values:
            _precheck(f"the result of filter {name!r}", estimate(*values, **kwargs))
        if name == "format" and values:
            check_format(values[0], (*values[1:], *kwargs.values()))
        return _bounded_result(func(*args, **kwargs), f"the result of filter {name!r}")

    bounded.mdmgen_bounded = True  # type: ignore[attr-defined]
    return bounded


class _BoundedFilters(dict):
    """The filter table; a filter added later (``env.filters["baggage"] = ...``) is bounded too."""

    def __setitem__(self, name: str, func: Callable[..., Any]) -> None:
        super().__setitem__(name, _bounded_filter(name, func))


class _Bounding(NodeTransformer):
    """Rewrites a parsed template so every loop iterates through ``environment.bounded_iter`` and
    every ``~`` concatenation goes through ``environment.bounded_concat``: the two places where
    Jinja's generated code loops or builds strings without calling anything the sandbox sees."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("bounded_iter"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("bounded_concat"), list(node.nodes), [], None, None,
                          lineno=node.lineno)


def _too_deep(name: str | None, filename: str | None) -> jinja2.TemplateSyntaxError:
    return jinja2.TemplateSyntaxError(f"template nests more than {MAX_TEMPLATE_DEPTH} levels "
                                      "(brackets, operators, filters or blocks); simplify it", 1, name, filename)


def _depth(ast: nodes.Node) -> int:
    """How deeply a parsed template nests, measured without recursion."""
    deepest = 0
    pending = [(ast, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_TEMPLATE_DEPTH:
            pending.extend((child, depth + 1) for child in node.iter_child_nodes())
    return deepest


class BoundedTemplate(jinja2.Template):
    """A template whose every ``render`` starts a fresh :class:`Budget`, and whose output obeys the
    character rule of every value mdmgen writes (``models.unencodable_text``): a template can make
    characters no input holds (``{{ '\\x00' }}``, ``'%c'|format(13)``)."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        token = _BUDGET.set(Budget())
        try:
            out = super().render(*args, **kwargs)
        finally:
            _BUDGET.reset(token)
        reason = unencodable_text(out)
        if reason:
            raise jinja2.TemplateRuntimeError(f"the rendered value {reason}")
        return out


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the limits of this module (see the module docstring)."""

    template_class = BoundedTemplate
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options: Any) -> None:
        options.setdefault("finalize", self._finalize)
        super().__init__(**options)
        filters = _BoundedFilters()
        for name, func in self.filters.items():
            filters[name] = func
        self.filters = filters
        self.globals["range"] = self.bounded_range
        self.globals["lipsum"] = self.bounded_lipsum

    @staticmethod
    def concat(pieces: Iterable[str]) -> str:  # type: ignore[override]
        """Join the output of a template, macro or ``{% set %}`` block, stopping at the limit."""
        out: list[str] = []
        total = 0
        for piece in pieces:
            total += len(piece)
            if total > MAX_OUTPUT_CHARS:
                raise _too_big("the rendered value")
            out.append(piece)
        return "".join(out)

    @staticmethod
    def _finalize(value: Any) -> Any:
        """Every ``{{ ... }}`` is measured before it is turned into text."""
        if (len(value) if value.__class__ is str else size_of(value)) > MAX_OUTPUT_CHARS:
            raise _too_big("the rendered value")
        return value

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        try:
            ast = super()._parse(source, name, filename)
        except RecursionError:  # Jinja's parser recurses once per nested bracket, operator or block
            raise _too_deep(name, filename) from None
        if _depth(ast) > MAX_TEMPLATE_DEPTH:
            raise _too_deep(name, filename)
        return _Bounding().visit(ast)

    def compile(self, source: Any, name: str | None = None, filename: str | None = None, raw: bool = False,
                defer_init: bool = False) -> Any:
        try:
            return super().compile(source, name, filename, raw, defer_init)
        except RecursionError:  # the code generator and Python's compiler recurse too
            raise _too_deep(name, filename) from None

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        """The iterable of a ``{% for %}`` loop, one budget step per item."""
        budget = _budget()
        for item in iterable:
            budget.step()
            yield item

    def bounded_concat(self, *parts: Any) -> str:
        for part in parts:
            _checked(part, "a '~' concatenation")
        return _checked("".join(str(p) for p in parts), "a '~' concatenation")

    def bounded_range(self, *args: int) -> range:
        numbers = range(*args)
        if len(numbers) > MAX_STEPS:
            raise TemplateBudgetError(f"range of {len(numbers):,} numbers; at most {MAX_STEPS:,}")
        return numbers

    def bounded_lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        """Jinja's ``lipsum`` global, which would write ``n`` paragraphs of up to ``max`` words."""
        _precheck("lipsum()", _as_int(n, 5) * _as_int(max, 100) * 12)
        return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _budget().step()
        if operator == "*":
            if (isinstance(right, int) and _length(left)) or (isinstance(left, int) and _length(right)):
                times = right if isinstance(right, int) else left
                _precheck("a '*' repetition", max(_length(left), _length(right)) * times)
        elif operator == "**":
            base, power = _as_int(left, 0), _as_int(right, 0)
            if abs(base) > 1 and power * base.bit_length() > MAX_INT_BITS:
                raise TemplateBudgetError(f"template computes an integer larger than 2**{MAX_INT_BITS}")
        elif operator == "%" and isinstance(left, str):
            check_format(left, right if isinstance(right, tuple) else (right,))
            _checked(right, "a '%' format argument")
        result = super().call_binop(context, operator, left, right)
        return _checked(result, f"a {operator!r} operation")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, as the sandbox wraps them, checked like ``%``."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        @functools.wraps(wrapped)
        def checked_format(*args: Any, **kwargs: Any) -> str:
            arguments = [*args, *kwargs.values()]
            if value.__name__ == "format_map" and args and isinstance(args[0], dict):
                arguments += list(args[0].values())
            check_format(fmt, arguments)
            for arg in arguments:
                _checked(arg, "a format argument")
            return _checked(wrapped(*args, **kwargs), "a formatted value")

        return checked_format

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            estimate = _STR_METHOD_ESTIMATES.get(getattr(__obj, "__name__", ""))
            if estimate is not None:
                with contextlib.suppress(TypeError):  # wrong arguments: the call itself says so
                    _precheck(f"str.{__obj.__name__}()", estimate(owner, *args, **kwargs))
        for arg in (*args, *kwargs.values()):
            _checked(arg, "a call argument")
        return _bounded_result(super().call(__context, __obj, *args, **kwargs), "a call's result")


def make_environment() -> ImmutableSandboxedEnvironment:
    """The environment every policy template is compiled in (see :class:`BoundedEnvironment`)."""
    return BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
