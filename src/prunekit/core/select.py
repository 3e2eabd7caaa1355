"""Which weights to prune: resolve ``include`` / ``exclude`` into a list of :class:`Target`.

A selector is a module name (``"features.0"``), an fnmatch glob (``"blocks.*.mlp.*"``) or a module
type (``nn.Linear``). A name or glob also selects the default-type layers *inside* the module it
names, so ``include=["encoder"]`` means every Linear/Conv weight under ``encoder``::

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
from torch import nn

from prunekit.errors import ConfigError, UnknownModuleError

Selector: TypeAlias = "str | type[nn.Module]"
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D`` (weight ``(in, out)``), without importing transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def is_default_type(module: nn.Module) -> bool:
    """True for the layers pruned when no ``include`` is given."""
    return isinstance(module, DEFAULT_TYPES) or is_hf_conv1d(module)


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
    """A module that was a candidate for pruning but was left alone, and why."""

    name: str
    reason: str


def _as_list(selectors: Any, arg: str) -> list[Selector]:
    if selectors is None:
        return []
    if isinstance(selectors, (str, type)):
        return [selectors]
    if isinstance(selectors, nn.Module):
        raise ConfigError(
            f"{arg}= got a module object ({type(selectors).__name__}); pass its name (e.g. 'fc') or its type"
        )
    if not isinstance(selectors, Iterable):
        raise ConfigError(f"{arg}= must be a name, glob, module type, or a list of them; got {selectors!r}")
    out = list(selectors)
    for sel in out:
        if isinstance(sel, str) or (isinstance(sel, type) and issubclass(sel, nn.Module)):
            continue
        raise ConfigError(
            f"{arg}= entries must be module names, fnmatch globs or nn.Module subclasses; got {sel!r} "
            f"({type(sel).__name__}). Pass e.g. {arg}=['fc', 'layer*.conv1', torch.nn.Conv2d]."
        )
    return out


def _is_glob(sel: str) -> bool:
    return any(ch in sel for ch in "*?[")


def _direct(name: str, module: nn.Module, sel: Selector) -> bool:
    if isinstance(sel, str):
        return name == sel or (_is_glob(sel) and fnmatch.fnmatchcase(name, sel))
    return isinstance(module, sel)


def _weight_param(module: nn.Module) -> nn.Parameter | None:
    param = module._parameters.get("weight")
    return param if isinstance(param, nn.Parameter) and param.numel() > 0 else None


def _check_found(modules: Sequence[tuple[str, nn.Module]], selectors: list[Selector], arg: str) -> None:
    names = [n for n, _ in modules]
    for sel in selectors:
        if isinstance(sel, type):
            if arg == "include" and not any(isinstance(m, sel) for _, m in modules):
                raise UnknownModuleError(
                    f"include= names the type {sel.__name__}, but the model has no module of that type. "
                    f"Remove it from include=."
                )
            continue
        if any(_direct(n, m, sel) for n, m in modules):
            continue
        shown = [n for n in names if n][:400]
        close = difflib.get_close_matches(sel, shown, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
        what = "glob" if _is_glob(sel) else "module name"
        raise UnknownModuleError(
            f"{arg}= {what} {sel!r} matches no module of {type(modules[0][1]).__name__}.{hint} "
            f"Names are as in model.named_modules(), e.g. {', '.join(repr(n) for n in shown[:5])}."
        )


def resolve_targets(
    model: nn.Module, include: Any = None, exclude: Any = None
) -> tuple[list[Target], list[Skipped]]:
    """The weights to prune and the candidates that were skipped.

    Args:
        model: the model.
        include: selectors of what to prune; ``None`` means every Linear/Conv weight.
        exclude: selectors of what to leave alone (applied after ``include``).

    Returns:
        ``(targets, skipped)`` in module order.

    Raises:
        UnknownModuleError: a name or glob matches nothing (the message lists close matches).
        ConfigError: a selector is neither a string nor an ``nn.Module`` subclass.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
        >>> targets, skipped = resolve_targets(model, exclude=["2"])
        >>> [t.fqn for t in targets], [s.name for s in skipped]
        (['0.weight'], ['2'])
    """
    inc = _as_list(include, "include")
    exc = _as_list(exclude, "exclude")
    modules = list(model.named_modules())
    _check_found(modules, inc, "include")
    _check_found(modules, exc, "exclude")

    names = [n for n, _ in modules if n]

    def containers(selectors: list[Selector]) -> set[str]:
        """Names of the modules a string selector names directly (their layers are selected too)."""
        out: set[str] = set()
        for sel in selectors:
            if isinstance(sel, str):
                out.update(n for n in names if n == sel or (_is_glob(sel) and fnmatch.fnmatchcase(n, sel)))
                if sel == "":
                    out.add("")
        return out

    inc_containers, exc_containers = containers(inc), containers(exc)

    def selected(name: str, module: nn.Module, selectors: list[Selector], named: set[str]) -> bool:
        if any(_direct(name, module, sel) for sel in selectors):
            return True
        if not is_default_type(module):
            return False
        parts = name.split(".")
        return "" in named or any(".".join(parts[:i]) in named for i in range(1, len(parts)))

    targets: list[Target] = []
    skipped: list[Skipped] = []
    seen: dict[int, str] = {}
    for name, module in modules:
        param = _weight_param(module)
        if param is None:
            continue
        wanted = selected(name, module, inc, inc_containers) if inc else is_default_type(module)
        if not wanted:
            continue
        if exc and selected(name, module, exc, exc_containers):
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
    "DEFAULT_TYPES",
    "Skipped",
    "Target",
    "input_dim",
    "is_default_type",
    "is_hf_conv1d",
    "resolve_targets",
]
