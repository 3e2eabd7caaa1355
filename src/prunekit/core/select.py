"""The one module selector (:func:`select_modules`) and which weights to prune (:func:`resolve_targets`).

Every verb selects modules the same way. A selector is a module name (``"features.0"``), an fnmatch
glob (``"blocks.*.mlp.*"``), a module type (``nn.Linear``) or a module object of the model, or a
list mixing them. Where the verb wants prunable layers, a name, glob or module object also selects
the :data:`PRUNABLE_TYPES` layers *inside* the module it names, so ``include=["encoder"]`` means
every Linear/Conv weight under ``encoder``. A name or glob that matches nothing raises
:class:`~prunekit.errors.UnknownModuleError` listing close matches::

    model.named_modules()  ──► candidates (modules owning a ``weight`` Parameter)
                                  │ include (default: Linear, Conv1d/2d/3d, GPT-2 Conv1D)
                                  │ exclude
                                  ▼ drop tied duplicates (same Parameter object)
                               [Target("fc1", Linear, in_dim=1), ...]

The default types include Hugging Face's GPT-2 ``Conv1D`` (weight stored ``(in, out)``), detected
by class name and module path, so ``transformers`` is never imported here.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn

from prunekit.errors import ConfigError, UnknownModuleError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""The one tuple of layer types pruned by default (plus GPT-2 ``Conv1D``, see :func:`is_default_type`)."""
DEFAULT_TYPES = PRUNABLE_TYPES


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D`` (weight ``(in, out)``), without importing transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def is_default_type(module: nn.Module) -> bool:
    """True for the layers pruned when no ``include`` is given."""
    return isinstance(module, PRUNABLE_TYPES) or is_hf_conv1d(module)


def input_dim(module: nn.Module) -> int:
    """The weight dimension that indexes input features: 0 for GPT-2 ``Conv1D``, else 1."""
    return 0 if is_hf_conv1d(module) else 1


@dataclass(frozen=True)
class Target:
    """One prunable weight: ``module.<param_name>`` of the module called ``name`` in the model."""

    name: str
    module: nn.Module
    param_name: str = "weight"

    @property
    def weight(self) -> nn.Parameter:
        param = getattr(self.module, self.param_name)
        assert isinstance(param, nn.Parameter)
        return param

    @property
    def fqn(self) -> str:
        return f"{self.name}.{self.param_name}" if self.name else self.param_name

    @property
    def in_dim(self) -> int:
        return input_dim(self.module)

    @property
    def kind(self) -> str:
        return type(self.module).__name__


@dataclass(frozen=True)
class Skipped:
    """A module (or op) that was a candidate for pruning but was left alone, and why: the one skip record of
    every verb's result."""

    name: str
    reason: str

    @property
    def where(self) -> str:
        """The module (or ``'op' in 'module'``) kept: the same as :attr:`name`."""
        return self.name


Spec: TypeAlias = "str | type[nn.Module] | nn.Module"


def as_specs(spec: Any, what: str = "include") -> list[Spec]:
    """``spec`` as a list: ``None`` -> ``[]``; one name/glob/type/module -> a list of one.

    Raises:
        ConfigError: an entry is not a string, an ``nn.Module`` subclass or an ``nn.Module``.
    """
    if spec is None:
        return []
    if isinstance(spec, (str, type, nn.Module)):
        spec = [spec]
    if isinstance(spec, Mapping) or not isinstance(spec, Iterable):
        raise ConfigError(
            f"{what}= must be a module name, glob, module type, module object or a list of them; got {spec!r}"
        )
    out = list(spec)
    for sel in out:
        if isinstance(sel, (str, nn.Module)) or (isinstance(sel, type) and issubclass(sel, nn.Module)):
            continue
        raise ConfigError(
            f"{what}= entries must be module names, fnmatch globs, nn.Module subclasses or modules of the "
            f"model; got {sel!r} ({type(sel).__name__}). Pass e.g. {what}=['fc', 'layer*.conv1', torch.nn.Conv2d]."
        )
    return out


def is_glob(sel: str) -> bool:
    """True if ``sel`` has an fnmatch wildcard (``*``, ``?`` or ``[``)."""
    return any(ch in sel for ch in "*?[")


def name_matches(name: str, pattern: str) -> bool:
    """``name`` equals ``pattern`` or matches it as an fnmatch glob (case-sensitive)."""
    return name == pattern or (is_glob(pattern) and fnmatch.fnmatchcase(name, pattern))


def matches(name: str, module: nn.Module | None, sel: Spec) -> bool:
    """True if ``sel`` (a name/glob, a type or a module object) selects the module called ``name``."""
    if isinstance(sel, str):
        return name_matches(name, sel)
    if isinstance(sel, type):
        return module is not None and isinstance(module, sel)
    return module is sel


def unknown_name(pattern: str, names: Sequence[str], what: str, owner: str) -> UnknownModuleError:
    """The error for a name/glob that matches nothing, with close matches (difflib) as a hint."""
    shown = [n for n in names if n][:2000]
    close = difflib.get_close_matches(pattern, shown, n=5, cutoff=0.5)
    hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
    kind = "glob" if is_glob(pattern) else "module name"
    return UnknownModuleError(
        f"{what}= {kind} {pattern!r} matches no module of {owner}.{hint} "
        f"Names are as in model.named_modules(), e.g. {', '.join(repr(n) for n in shown[:5])}."
    )


def match_names(names: Sequence[str], spec: Any, *, what: str = "include", owner: str = "the model") -> list[str]:
    """The entries of ``names`` selected by name/glob ``spec`` (in the order of ``names``).

    For lists of names without modules (layers of an analysis result, blocks); module types and
    objects are refused here. Every pattern must match something.

    Raises:
        UnknownModuleError: a pattern matches no name (the message lists close matches).
        ConfigError: an entry is not a string.
    """
    specs = as_specs(spec, what)
    for sel in specs:
        if not isinstance(sel, str):
            raise ConfigError(f"{what}= takes names or globs here, got {sel!r}")
        if not any(name_matches(n, sel) for n in names):
            raise unknown_name(sel, names, what, owner)
    return [n for n in names if any(name_matches(n, sel) for sel in specs if isinstance(sel, str))]


def select_modules(
    model: nn.Module,
    spec: Any,
    *,
    what: str = "include",
    children: bool | Callable[[nn.Module], bool] = False,
) -> list[tuple[str, nn.Module]]:
    """The one module selector: ``(name, module)`` pairs selected by ``spec``, in model order.

    ``spec`` is ``None`` (nothing), or one or a list of: a module name (``"encoder.layer.0"``), an
    fnmatch glob (``"blocks.*.mlp.*"``), a module type (``nn.Linear``) or a module object of the model.
    With ``children`` (``True`` = :data:`PRUNABLE_TYPES` and GPT-2 ``Conv1D``, or a predicate), a
    name, glob or module object also selects the matching layers *inside* the module it names.

    Args:
        model: the model.
        spec: the selectors.
        what: the argument name shown in errors (``"include"``, ``"exclude"``, ``"ratio"``, ...).
        children: also select descendants of named modules that pass this predicate.

    Raises:
        UnknownModuleError: a name or glob matches nothing (with close matches), a module object is
            not part of the model, or an ``include=`` type matches no module.
        ConfigError: an entry is of an unsupported kind.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
        >>> [n for n, _ in select_modules(m, ["1"], children=True)]
        ['1', '1.1']
    """
    specs = as_specs(spec, what)
    if not specs:
        return []
    modules = list(model.named_modules())
    names = [n for n, _ in modules]
    for sel in specs:
        if isinstance(sel, str):
            if not any(name_matches(n, sel) for n in names):
                raise unknown_name(sel, names, what, type(model).__name__)
        elif isinstance(sel, type):
            if what == "include" and not any(isinstance(m, sel) for _, m in modules):
                raise UnknownModuleError(
                    f"include= names the type {sel.__name__}, but {type(model).__name__} has no module of that "
                    f"type. Remove it from include=."
                )
        elif not any(m is sel for _, m in modules):
            raise UnknownModuleError(
                f"{what}= has a {type(sel).__name__} module that is not part of {type(model).__name__}; pass a "
                f"submodule of the model, its name, or its type"
            )
    keep = is_default_type if children is True else children or None
    direct = {n for n, m in modules if any(matches(n, m, sel) for sel in specs)}
    named = {n for n, m in modules if any(not isinstance(s, type) and matches(n, m, s) for s in specs)}

    def inside(name: str) -> bool:
        parts = name.split(".") if name else []
        return "" in named or any(".".join(parts[:i]) in named for i in range(1, len(parts)))

    return [(n, m) for n, m in modules if n in direct or (keep is not None and keep(m) and inside(n))]


def _weight_param(module: nn.Module) -> nn.Parameter | None:
    param = module._parameters.get("weight")
    return param if isinstance(param, nn.Parameter) and param.numel() > 0 else None


def resolve_targets(
    model: nn.Module, include: Any = None, exclude: Any = None
) -> tuple[list[Target], list[Skipped]]:
    """The weights to prune and the candidates that were skipped.

    Args:
        model: the model.
        include: selectors of what to prune (see :func:`select_modules`: names, globs, types, module
            objects; a name selects the Linear/Conv layers inside it); ``None`` means every Linear/Conv weight.
        exclude: selectors of what to leave alone (applied after ``include``).

    Returns:
        ``(targets, skipped)`` in module order.

    Raises:
        UnknownModuleError: a name or glob matches nothing (the message lists close matches).
        ConfigError: a selector is neither a string, an ``nn.Module`` subclass nor a module.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
        >>> targets, skipped = resolve_targets(model, exclude=["2"])
        >>> [t.fqn for t in targets], [s.name for s in skipped]
        (['0.weight'], ['2'])
    """
    inc_specs = as_specs(include, "include")
    inc = {n for n, _ in select_modules(model, inc_specs, what="include", children=True)}
    exc = {n for n, _ in select_modules(model, exclude, what="exclude", children=True)}
    modules = list(model.named_modules())

    targets: list[Target] = []
    skipped: list[Skipped] = []
    seen: dict[int, str] = {}
    for name, module in modules:
        param = _weight_param(module)
        if param is None:
            continue
        wanted = name in inc if inc_specs else is_default_type(module)
        if not wanted:
            continue
        if name in exc:
            skipped.append(Skipped(name, "excluded"))
            continue
        if param.ndim < 2:
            skipped.append(Skipped(name, f"weight is {param.ndim}-D {tuple(param.shape)}; only 2-D+ weights"))
            continue
        if not torch.is_floating_point(param):
            skipped.append(Skipped(name, f"weight dtype {param.dtype} is not floating point"))
            continue
        if id(param) in seen:
            skipped.append(Skipped(name, f"weight is tied to {seen[id(param)]!r} (pruned once there)"))
            continue
        seen[id(param)] = name
        targets.append(Target(name, module))
    return targets, skipped


__all__ = [
    "as_specs",
    "DEFAULT_TYPES",
    "input_dim",
    "is_default_type",
    "is_glob",
    "is_hf_conv1d",
    "match_names",
    "matches",
    "name_matches",
    "PRUNABLE_TYPES",
    "resolve_targets",
    "select_modules",
    "Skipped",
    "Spec",
    "Target",
    "unknown_name",
]
