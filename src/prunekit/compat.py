"""Old spellings that keep working for one release, each with a :class:`DeprecationWarning` naming the new one.

- Module paths of the flat layout before 0.2 (``prunekit.criteria``, ``prunekit.surgery``, ...) import the
  module that now holds the code (``prunekit.weights.criteria``, ``prunekit.structured.surgery``, ...).
- Renamed public names (``pk.ModuleNotFound`` -> ``pk.UnknownModuleError``).
- Renamed keyword arguments of the verbs (see :func:`renamed_kwargs`).

Example:
    >>> import warnings, prunekit as pk
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     err = pk.ModuleNotFound
    >>> err is pk.UnknownModuleError, "UnknownModuleError" in str(w[0].message)
    (True, True)
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

REMOVED_IN = "0.3"

# old module path -> new module path (the flat layout of 0.1 -> the packages of 0.2)
MOVED_MODULES: dict[str, str] = {
    "prunekit._loops": "prunekit.training.basic",
    "prunekit.allocate": "prunekit.analysis",
    "prunekit.channel_criteria": "prunekit.structured.criteria",
    "prunekit.checkpoint": "prunekit.training.checkpoint",
    "prunekit.criteria": "prunekit.weights.criteria",
    "prunekit.data": "prunekit.core.datasets",
    "prunekit.demo": "prunekit.cli.demo",
    "prunekit.graph_rules": "prunekit.graph.rules.builder",
    "prunekit.graph_rules_attention": "prunekit.graph.rules.attention",
    "prunekit.graph_rules_base": "prunekit.graph.rules.base",
    "prunekit.graph_rules_layers": "prunekit.graph.rules.layers",
    "prunekit.graph_rules_shape": "prunekit.graph.rules.shape",
    "prunekit.head_sensitivity": "prunekit.analysis.heads",
    "prunekit.hf": "prunekit.io.hf",
    "prunekit.layers": "prunekit.structured",
    "prunekit.masks": "prunekit.core.masks",
    "prunekit.methods": "prunekit.training",
    "prunekit.methods.common": "prunekit.training.common",
    "prunekit.methods.iterative": "prunekit.training.iterative",
    "prunekit.methods.lottery": "prunekit.training.lottery",
    "prunekit.methods.oneshot": "prunekit.training.finetune",
    "prunekit.methods.results": "prunekit.training.results",
    "prunekit.metrics": "prunekit.core.metrics",
    "prunekit.optim_state": "prunekit.structured.optim_state",
    "prunekit.pruner": "prunekit.training",
    "prunekit.runner": "prunekit.recipes",
    "prunekit.schedules": "prunekit.training.schedules",
    "prunekit.selection": "prunekit.core.select",
    "prunekit.sensitivity": "prunekit.analysis.sweep",
    "prunekit.sensitivity_estimates": "prunekit.analysis.estimates",
    "prunekit.sensitivity_eval": "prunekit.core.batches",
    "prunekit.sensitivity_layers": "prunekit.analysis.layers",
    "prunekit.sensitivity_result": "prunekit.analysis.result",
    "prunekit.sources": "prunekit.recipes.sources",
    "prunekit.structured_check": "prunekit.structured.check",
    "prunekit.structured_select": "prunekit.structured.select",
    "prunekit.surgery": "prunekit.structured.surgery",
    "prunekit.trace": "prunekit.graph.trace",
}

# (module, old name) -> "new.module.path.name": names that moved or were renamed
MOVED_NAMES: dict[tuple[str, str], str] = {
    ("prunekit", "ModuleNotFound"): "prunekit.errors.UnknownModuleError",
    ("prunekit.errors", "ModuleNotFound"): "prunekit.errors.UnknownModuleError",
    ("prunekit.training", "evaluate"): "prunekit.core.evaluate",
    ("prunekit.training", "EvalResult"): "prunekit.core.EvalResult",
}


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in prunekit {REMOVED_IN}; use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def resolve(dotted: str) -> Any:
    """The object at ``package.module.name`` (a module, or an attribute of one)."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def moved_name(module: str, name: str) -> Any:
    """Look up a deprecated ``module.name``, warning; ``AttributeError`` when it was never a name."""
    new = MOVED_NAMES.get((module, name))
    if new is None and module == "prunekit" and f"prunekit.{name}" in MOVED_MODULES:
        new = MOVED_MODULES[f"prunekit.{name}"]
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warn(f"{module}.{name}", new)
    return resolve(new)


def deprecated_attribute(name: str) -> Any:
    """``prunekit.<name>`` for an old spelling (used by the package's ``__getattr__``)."""
    return moved_name("prunekit", name)


def renamed_kwargs(verb: str | None = None, /, **renames: str) -> Callable[[F], F]:
    """Decorator: old keyword names keep working for one release, each with a ``DeprecationWarning``.

    ``@renamed_kwargs(ignore="exclude")`` makes ``f(ignore=x)`` call ``f(exclude=x)`` and warn
    ``"prune_channels(ignore=) is deprecated ...; use prune_channels(exclude=)"``. Giving both spellings
    raises :class:`~prunekit.errors.ConfigError`.

    Example:
        >>> import warnings
        >>> @renamed_kwargs(blocks="include")
        ... def f(*, include=None):
        ...     return include
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     f(blocks=["a"]), "use f(include=)" in str(w[0].message)
        (['a'], True)
    """

    def decorate(fn: F) -> F:
        name = verb or fn.__name__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        from prunekit.errors import ConfigError

                        raise ConfigError(f"{name}: give {new}= (the new name of {old}=), not both")
                    warn(f"{name}({old}=)", f"{name}({new}=)", stacklevel=3)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__dict__["renamed_kwargs"] = dict(renames)
        return wrapper  # type: ignore[return-value]

    return decorate


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: an old module path imports the module that now holds its code, with a warning."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a fresh module object that forwards to the new one (exec_module)

    def exec_module(self, module: ModuleType) -> None:
        new_path = MOVED_MODULES[module.__name__]
        warn(f"the module {module.__name__}", new_path, stacklevel=8)
        new = importlib.import_module(new_path)
        module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})
        module.__dict__["__getattr__"] = lambda name: getattr(new, name)


class Package(ModuleType):
    """The class of the ``prunekit`` module: importing an old module path (``prunekit.sensitivity``) must not
    bind that module over the verb of the same name (``pk.sensitivity``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and name in getattr(self, "_API", {}):
            return
        super().__setattr__(name, value)


def install() -> None:
    """Put :class:`MovedModuleFinder` on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


install()

__all__ = [
    "MOVED_MODULES",
    "MOVED_NAMES",
    "MovedModuleFinder",
    "Package",
    "deprecated_attribute",
    "install",
    "moved_name",
    "renamed_kwargs",
    "warn",
]
