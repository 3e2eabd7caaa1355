"""Strict checks of the numbers public verbs take: a bool is not a count, NaN is not a ratio.

Example:
    >>> check_count("prune_layers", "n", 2)
    2
    >>> check_count("prune_layers", "n", True, minimum=1)
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: prune_layers: n must be an integer >= 1, got True (bool); pass a number such as 1
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prunekit.errors import ConfigError


def _kind(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_count(verb: str, name: str, value: Any, *, minimum: int = 0, optional: bool = False) -> Any:
    """``value`` if it is an ``int`` (not a bool) ``>= minimum`` (or ``None`` when ``optional``).

    Raises:
        ConfigError: naming the verb, the argument and what was given.
    """
    if value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{verb}: {name} must be an integer >= {minimum}{' or None' if optional else ''}, got "
            f"{_kind(value)}; pass a number such as {max(minimum, 1)}"
        )
    return value


def check_real(
    verb: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` if it is a finite real number (not a bool) in the given interval (or ``None`` when ``optional``).

    Raises:
        ConfigError: naming the verb, the argument, the interval and what was given.
    """
    if value is None and optional:
        return value
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    where = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high)
        )
    if not ok:
        raise ConfigError(f"{verb}: {name} must be a finite number in {where}, got {_kind(value)}")
    return value


def check_finite_values(verb: str, what: str, values: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
    """Every value of ``values`` (name -> number or sequence of numbers) is a finite real number.

    Raises:
        ConfigError: naming the first entry holding NaN, inf or a non-number.
    """
    items = values.items() if isinstance(values, Mapping) else values
    for key, value in items:
        seq = value if isinstance(value, (list, tuple)) else [value]
        for v in seq:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ConfigError(
                    f"{verb}: {what} {key!r} holds {_kind(v)}; every value must be a finite number "
                    "(re-run the analysis, or exclude that layer)"
                )


__all__ = ["check_count", "check_finite_values", "check_real"]
