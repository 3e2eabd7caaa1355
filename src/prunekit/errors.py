"""Errors raised by prunekit.

Every error says what was wrong, what was expected and how to fix it. All derive from
:class:`PrunekitError`, so ``except pk.PrunekitError`` catches everything prunekit raises on purpose.

    PrunekitError
    ├── ConfigError        bad argument value: sparsity, pattern, ratio, criterion name, recipe
    ├── UnknownModuleError a module name / glob that matches nothing in the model
    ├── PatternError       a layer whose shape cannot take an N:M pattern
    ├── DataRequiredError  a data-aware criterion called without data
    ├── PlanError          a structured plan that cannot be applied (too much removed, divisibility)
    ├── UnsupportedOpError an op the dependency graph cannot see through
    └── FormatError        a file that is corrupted, not ours, or does not fit the model
"""

from __future__ import annotations


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """An argument or recipe value is out of range or unknown."""


class UnknownModuleError(PrunekitError, KeyError):
    """A module name or glob matched nothing in the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class PatternError(PrunekitError, ValueError):
    """A layer cannot take the requested N:M pattern."""


class DataRequiredError(PrunekitError, ValueError):
    """A data-aware criterion or method was called without data."""


class PlanError(PrunekitError, ValueError):
    """A structured pruning plan cannot be applied to this model."""


class UnsupportedOpError(PrunekitError, RuntimeError):
    """The dependency graph met an op it cannot see through."""


class FormatError(PrunekitError, ValueError):
    """A saved file is corrupted, not written by prunekit, or does not fit the model."""


class PrunekitWarning(UserWarning):
    """Base class of every warning prunekit emits (filter them with ``warnings.simplefilter``)."""


class LayerPrunedAwayWarning(PrunekitWarning):
    """A layer was pruned to (almost) 100%: it now passes (almost) nothing on, often by accident of a
    global threshold; give it its own ratio, exclude it, or use ``scope="layer"``/``"row"``."""


class UnsavableDefaultWarning(PrunekitWarning):
    """A default made the pruned model impossible to export in some format (e.g. ``save_pretrained``)."""


def __getattr__(name: str) -> type[PrunekitError]:
    if name == "ModuleNotFound":  # the 0.1 name, easy to confuse with the builtin ModuleNotFoundError
        import warnings

        warnings.warn(
            "prunekit.errors.ModuleNotFound is deprecated and will be removed in prunekit 0.3; use "
            "prunekit.errors.UnknownModuleError",
            DeprecationWarning,
            stacklevel=2,
        )
        return UnknownModuleError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataRequiredError",
    "FormatError",
    "LayerPrunedAwayWarning",
    "PrunekitWarning",
    "UnknownModuleError",
    "UnsavableDefaultWarning",
    "PatternError",
    "PlanError",
    "PrunekitError",
    "UnsupportedOpError",
]
