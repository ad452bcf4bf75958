"""The jinja2 environment chat templates render in: transformers' sandbox, plus a budget.

A chat template comes with a model file, so it is untrusted input. jinja2's sandbox limits
what a template may touch (no attributes starting with ``_``, no mutation), not how long it
runs or how much it builds: two nested ``range(100000)`` loops spin for hours, and
``{% set ns.s = ns.s ~ ns.s %}`` thirty times is a gigabyte. So every render here runs under
a :class:`Budget`:

* **steps**: each loop iteration and each call (function, method, macro, filter) is a step;
* **time**: checked every 1024 steps;
* **size**: a string or list the template builds (``*``, ``+``, ``~``, a call's result, the
  output) may hold at most ``chars`` items. ``*``, ``+`` and ``~`` are checked before they
  allocate; a call's result (``"x".center(n)``, a filter) only after it returns.

Loops are counted by rewriting the parsed template: each ``{% for %}`` iterates
``environment.counted(...)`` and each ``~`` calls ``environment.concat_checked(...)``,
names a template cannot reach or shadow. Past the budget a render raises :class:`OverBudget`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

RENDER_STEPS = 1_000_000  # a real template takes tens of steps per message
RENDER_SECONDS = 10.0
RENDER_CHARS = 64 * 2**20
_CHECK_TIME_EVERY = 1024


class OverBudget(Exception):
    """A render went past its :class:`Budget`; the message says which limit."""


class Budget:
    """The limits of one render, and what it has used so far."""

    def __init__(self, steps: int = RENDER_STEPS, seconds: float = RENDER_SECONDS, chars: int = RENDER_CHARS):
        self.steps, self.seconds, self.chars = steps, seconds, chars
        self.steps_left = steps
        self.deadline = time.monotonic() + seconds

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise OverBudget(f"more than {self.steps:,} loop iterations and calls")
        if self.steps_left % _CHECK_TIME_EVERY == 0 and time.monotonic() > self.deadline:
            raise OverBudget(f"more than {self.seconds:g} s")

    def size(self, length: int) -> None:
        if length > self.chars:
            raise OverBudget(f"a value of size {length:,}, at most {self.chars:,} allowed")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("chat_template_budget", default=None)


@contextlib.contextmanager
def budget(limits: Budget | None = None):
    """Renders inside the block run under `limits` (a fresh default Budget if None)."""
    token = _BUDGET.set(limits or Budget())
    try:
        yield _BUDGET.get()
    finally:
        _BUDGET.reset(token)


def _step() -> None:
    current = _BUDGET.get()
    if current is not None:
        current.step()


def _check_size(value):
    current = _BUDGET.get()
    if current is not None and isinstance(value, (str, list, tuple, dict)):
        current.size(len(value))
    return value


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """transformers' chat-template sandbox, with every loop, call and growing operation counted."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        _step()
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator, left, right):
        current = _BUDGET.get()
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, kept fast
            if current is not None and len(left) + len(right) > current.chars:
                current.size(len(left) + len(right))
            return left + right
        if current is not None:
            current.size(_predicted_size(operator, left, right))
        return super().call_binop(context, operator, left, right)

    def counted(self, iterable):
        for item in iterable:
            _step()
            yield item

    def concat_checked(self, *parts) -> str:
        texts = [str(p) for p in parts]
        current = _BUDGET.get()
        if current is not None:
            current.size(sum(map(len, texts)))
        return "".join(texts)

    def checked(self, value):
        _step()
        return _check_size(value)


def _predicted_size(operator: str, left, right) -> int:
    """How big the result of `left operator right` will be, before computing it."""
    sized = (str, list, tuple)
    if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        return len(left) + len(right)
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, sized) and isinstance(n, int):
                return len(seq) * max(n, 0)
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        return right * abs(left).bit_length() // 8  # bytes of the result
    return 0


class _Bounded(NodeTransformer):
    """Routes loops, ``~`` and filters through the environment's counting methods."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        node.iter = _call("counted", node.iter, node.lineno)
        return node

    def visit_Concat(self, node):
        node = self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("concat_checked"), node.nodes, [], None, None,
                          lineno=node.lineno)

    def visit_Filter(self, node):
        node = self.generic_visit(node)
        return _call("checked", node, node.lineno)

    def visit_FilterBlock(self, node):
        node.body = [self.visit(child) for child in node.body]  # the block's own filter has no operand to wrap
        return node


def _call(method: str, argument, lineno: int):
    return nodes.Call(nodes.EnvironmentAttribute(method), [argument], [], None, None, lineno=lineno)


# --- what transformers' chat-template environment adds -------------------------------------


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body unchanged, as in transformers."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' filter: no HTML escaping, json.dumps options exposed
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class _TemplateDict:
    """``dict(...)`` without attribute access to the type (as transformers restricts it)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """``namespace(...)`` refusing underscore attributes (as transformers restricts it)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


def compile_template(source: str) -> jinja2.Template:
    """``source`` in the environment transformers renders chat templates in, every loop and call counted.

    Renders are bounded only inside ``with budget():``; :class:`ChatTemplate` always renders there.
    """
    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                             extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, dict=_TemplateDict(), namespace=_Namespace,
                       strftime_now=lambda format: datetime.now().strftime(format))
    return env.from_string(_Bounded().visit(env.parse(source)))


def render_bounded(template: jinja2.Template, limits: Budget | None = None, **variables) -> str:
    """``template.render(**variables)`` under a budget, the output's size included."""
    with budget(limits) as current:
        pieces, total = [], 0
        for piece in template.generate(**variables):
            total += len(piece)
            current.size(total)
            pieces.append(piece)
        return "".join(pieces)
