"""Declarative option schemas for drivers and buses: each driver declares its options beside its code.

`parse_options` checks a mapping against a schema and reports *every* problem at once, each with the key it
concerns, so the agent's config loader can prefix the key path (`sensors[1].options.address`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()
REQUIRED: Any = _MISSING  # use as an Option default to make the option mandatory


@dataclass(frozen=True)
class Option:
    """One option: its name, expected type(s), default (absent means required), an optional check and doc."""

    name: str
    type: type | tuple[type, ...]
    default: Any = _MISSING
    doc: str = ""
    # returns an "expected ..." message, or None if fine; a check of a nested list/table may instead return a list of
    # (key suffix, message), e.g. [("[2].type", "expected one of ...")], reported as "<name>[2].type: ..."
    check: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    if isinstance(t, tuple):
        if set(t) == {int, float}:
            return "a number"
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _type_ok(value: Any, t: type | tuple[type, ...]) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool):
        return bool in ts
    if isinstance(value, int) and float in ts:
        return True
    return isinstance(value, ts)


# No number in a config is meaningfully larger than this; TOML integers are unbounded in Python and `inf`/`nan` are
# valid TOML floats, so every number is checked against it before any option's own check runs.
MAX_MAGNITUDE = 1e15


def finite_problem(value: Any) -> str | None:
    """'expected a finite number ...' for inf, NaN or a number too large to be meant; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "expected a finite number"
    if abs(value) > MAX_MAGNITUDE:
        return f"expected a number of at most {MAX_MAGNITUDE:g} in magnitude"
    return None


def _nul_problem(value: Any) -> str | None:
    if isinstance(value, str) and "\0" in value:
        return "expected text without NUL characters"
    if isinstance(value, list) and any(isinstance(x, str) and "\0" in x for x in value):
        return "expected text without NUL characters"
    return None


def describe_number(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_MAGNITUDE:
        return f"an integer of {len(str(abs(value)))} digits"
    return describe(value)


def positive(v: Any) -> str | None:
    return None if v > 0 else "expected a positive number"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "expected a number >= 0"


def in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"expected a number from {lo} to {hi}"
    return check


def at_most(hi: float, *, positive_only: bool = True) -> Callable[[Any], str | None]:
    """A positive (or >= 0) number not above `hi` (an interval of at most a day, ...)."""
    def check(v: Any) -> str | None:
        if positive_only and not v > 0:
            return "expected a positive number"
        if not positive_only and not v >= 0:
            return "expected a number >= 0"
        return None if v <= hi else f"expected a number of at most {hi:g}"
    return check


def parse_options(schema: list[Option], options: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check `options` against `schema`. Returns (values with defaults filled in, [(key, message), ...])."""
    values: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    known = {o.name for o in schema}
    for key in options:
        if key not in known:
            errors.append((key, f"unknown option (known: {', '.join(sorted(known)) or 'none'})"))
    for opt in schema:
        if opt.name not in options:
            if opt.required:
                errors.append((opt.name, f"missing: expected {type_name(opt.type)}{': ' + opt.doc if opt.doc else ''}"))
            else:
                values[opt.name] = opt.default
            continue
        value = options[opt.name]
        if not _type_ok(value, opt.type):
            errors.append((opt.name, f"expected {type_name(opt.type)}, got {describe(value)}"))
            continue
        problem = finite_problem(value) or _nul_problem(value)
        if problem:  # before any check: inf/NaN compare oddly and huge integers overflow float()
            errors.append((opt.name, f"{problem}, got {describe_number(value)}"))
            continue
        if opt.choices is not None and value not in opt.choices:
            errors.append((opt.name, f"expected one of {', '.join(map(describe, opt.choices))}, got {describe(value)}"))
            continue
        if opt.check is not None:
            try:
                problem = opt.check(value)
            except (TypeError, ValueError, OverflowError) as e:  # a check surprised by a value: still one message
                problem = f"expected {type_name(opt.type)}{': ' + opt.doc if opt.doc else ''} ({e})"
            if isinstance(problem, list):  # a nested table/list: [(key suffix like "[2].type", message), ...]
                if problem:
                    errors.extend((f"{opt.name}{suffix}", message) for suffix, message in problem)
                    continue
            elif problem:
                errors.append((opt.name, f"{problem}, got {describe(value)}"))
                continue
        values[opt.name] = float(value) if opt.type is float and isinstance(value, int) else value
    return values, errors
