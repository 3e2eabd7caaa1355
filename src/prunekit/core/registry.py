"""One registry class, and one criterion registry per granularity.

Every place that takes a criterion *name* (Python verbs, YAML recipes, the CLI) looks it up in
the registry of its granularity, so a criterion registered once is usable everywhere::

    >>> import prunekit as pk
    >>> from prunekit.weights.criteria import Magnitude
    >>> pk.register_criterion("my_magnitude", Magnitude)
    >>> "my_magnitude" in criterion_registry("weight")
    True
    >>> _ = criterion_registry("weight").pop("my_magnitude")

Granularities: ``"weight"`` (factories of :class:`prunekit.weights.WeightCriterion`), ``"channel"``
(factories of :class:`prunekit.structured.ChannelCriterion`), ``"sensitivity"`` (callables
``f(weight, *, name, grad, fisher) -> scores``) and ``"layer"`` (block criteria of ``prune_layers``).
"""

from __future__ import annotations

import difflib
from typing import Any, Generic, Literal, TypeVar

from prunekit.errors import ConfigError

T = TypeVar("T")
Granularity = Literal["weight", "channel", "sensitivity", "layer"]
GRANULARITIES: tuple[str, ...] = ("weight", "channel", "sensitivity", "layer")


class Registry(dict[str, T], Generic[T]):
    """A ``{name: entry}`` dict with registration checks and lookups that list the valid names.

    Example:
        >>> r: Registry[int] = Registry("colour")
        >>> r.register("red", 1)
        >>> r.lookup("rde")
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: unknown colour 'rde' (did you mean 'red'?); valid names are red
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, name: str, entry: T, *, overwrite: bool = True) -> None:
        """Add ``name`` (case-insensitive); with ``overwrite=False`` an existing entry is kept."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.what} name must be a non-empty string, got {name!r}")
        key = name.lower()
        if overwrite or key not in self:
            self[key] = entry

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def lookup(self, name: str) -> T:
        """The entry of ``name``; ``ConfigError`` with close matches and the valid names otherwise."""
        key = name.lower() if isinstance(name, str) else name
        if key not in self:
            raise ConfigError(self.unknown_message(name))
        return self[key]

    def unknown_message(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name).lower(), list(self), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.what} {name!r}{hint}; valid names are {', '.join(self.names())}"


WEIGHT_CRITERIA: Registry[Any] = Registry("criterion")
CHANNEL_CRITERIA: Registry[Any] = Registry("channel criterion")
SENSITIVITY_CRITERIA: Registry[Any] = Registry("sensitivity criterion")
LAYER_CRITERIA: Registry[Any] = Registry("layer criterion")
_BY_GRANULARITY: dict[str, Registry[Any]] = {
    "weight": WEIGHT_CRITERIA,
    "channel": CHANNEL_CRITERIA,
    "sensitivity": SENSITIVITY_CRITERIA,
    "layer": LAYER_CRITERIA,
}


def criterion_registry(granularity: str) -> Registry[Any]:
    """The criterion registry of ``granularity`` (``"weight"``, ``"channel"``, ``"sensitivity"``, ``"layer"``).

    The built-in criteria are registered when their package is imported (``prunekit.weights``,
    ``prunekit.structured``, ``prunekit.analysis``).
    """
    if granularity not in _BY_GRANULARITY:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    return _BY_GRANULARITY[granularity]


def register_criterion(name: str, factory: Any, granularity: Granularity = "weight") -> None:
    """Make ``criterion=name`` mean ``factory`` for verbs of ``granularity``, from Python, YAML and the CLI.

    Args:
        name: the name (case-insensitive).
        factory: ``"weight"``: a zero-argument factory of a ``WeightCriterion``; ``"channel"``: a
            zero-argument factory of an object with ``score(group, params, module_types)``;
            ``"sensitivity"``: a callable ``f(weight, *, name, grad, fisher) -> scores``.
        granularity: which verbs see it.

    Raises:
        ConfigError: empty name, unknown granularity, or a factory that is not callable.
    """
    if not callable(factory):
        raise ConfigError(f"register_criterion: factory must be callable, got {type(factory).__name__}")
    criterion_registry(granularity).register(name, factory)


__all__ = [
    "CHANNEL_CRITERIA",
    "GRANULARITIES",
    "LAYER_CRITERIA",
    "SENSITIVITY_CRITERIA",
    "WEIGHT_CRITERIA",
    "Registry",
    "criterion_registry",
    "register_criterion",
]
