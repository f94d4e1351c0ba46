"""Jinja2 rendering for task specs: templates (text) and expressions (native values).

Keys ending in ``text``/``description``/``fewshot_target`` are templates (``"Question: {{question}}"``);
every other document key is an expression evaluated to a Python value (``question.stem``,
``choices | map(attribute='text') | list``). This is the same template language lm-eval's YAMLs use.

A task file is input, not code: templates run in Jinja's immutable sandbox, and any attempt to reach
Python internals (``__class__``, ``__globals__``, ``__subclasses__``, a function's ``__init__``...) or to
mutate a document stops with a :class:`TemplateError` instead of evaluating.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A spec's template or expression could not be compiled or evaluated."""


def _regex(value: str, pattern: str, group: int = 1) -> str:
    """``query | regex('^Question: (.*)$', 1)``: the group of the first match (DOTALL)."""
    match = re.search(pattern, value, flags=re.S)
    if match is None:
        raise TemplateError(f"regex {pattern!r} does not match {value[:80]!r}")
    return match.group(group)


def _index_of(items: list, value: Any) -> int:
    """``labels | index_of(answerKey)``: position of `value` in `items` (whitespace-stripped strings)."""
    key = value.strip() if isinstance(value, str) else value
    norm = [i.strip() if isinstance(i, str) else i for i in items]
    if key not in norm:
        raise TemplateError(f"{value!r} is not one of {items!r}")
    return norm.index(key)


def _capitalize(value: str) -> str:
    """Python's str.capitalize (first character upper, rest lower), as lm-eval's HellaSwag uses."""
    return value.capitalize()


def _regex_replace(value: str, pattern: str, repl: str, count: int = 0) -> str:
    """``text | regex_replace('a+', 'b')``: re.sub, as lm-eval's template filter of the same name."""
    return re.sub(pattern, repl, value, count=count)


MAX_REPEAT = 100_000  # longest string or list a template may build with `*`; largest exponent via `**`


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, refusing unsafe access at once instead of yielding an undefined value,
    and bounding `*` and `**` (``'a' * 10**10`` would ask for 10 GB)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                    raise SecurityError(f"repeating a sequence {n} times builds more than {MAX_REPEAT} items")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError(f"exponent {right} is larger than 64")
        return super().call_binop(context, operator, left, right)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = _Sandbox(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(regex=_regex, index_of=_index_of, py_capitalize=_capitalize, keys=lambda d: list(d.keys()),
                       values=lambda d: list(d.values()), regex_replace=_regex_replace)
    return env


def _refused(source: str, e: SecurityError) -> TemplateError:
    return TemplateError(f"template {source[:120]!r} is refused: {e}. A task template may only read document fields "
                         "(no Python internals such as __class__ or __globals__, no mutation): it is input, not code")


@lru_cache(maxsize=4096)
def _template(source: str) -> jinja2.Template:
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"bad template {source!r}: {e}") from e


@lru_cache(maxsize=4096)
def _expression(source: str):
    try:
        return environment().compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"bad expression {source!r}: {e}") from e


def render(source: str, doc: dict) -> str:
    """Render a text template against a document."""
    try:
        return _template(source).render(**doc)
    except SecurityError as e:
        raise _refused(source, e) from e
    except (OverflowError, MemoryError, RecursionError) as e:  # e.g. the sandbox's range() limit
        raise TemplateError(f"template {source[:120]!r} is refused: {type(e).__name__}: {e}") from e
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {source!r}: {e.message}; document fields are {sorted(doc)}") from e


def evaluate(source: Any, doc: dict) -> Any:
    """Evaluate an expression against a document; non-strings (ints, lists) pass through as constants."""
    if not isinstance(source, str):
        return source
    try:
        value = _expression(source)(**doc)
    except SecurityError as e:
        raise _refused(source, e) from e
    except (OverflowError, MemoryError, RecursionError) as e:  # e.g. the sandbox's range() limit
        raise TemplateError(f"template {source[:120]!r} is refused: {type(e).__name__}: {e}") from e
    except jinja2.UndefinedError as e:
        raise TemplateError(f"expression {source!r}: {e.message}; document fields are {sorted(doc)}") from e
    if isinstance(value, jinja2.Undefined):
        raise TemplateError(f"expression {source!r} is undefined; document fields are {sorted(doc)}")
    return value
