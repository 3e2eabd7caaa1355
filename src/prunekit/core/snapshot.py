"""Snapshot and restore what a pruning verb may change, for the steps that cannot be validated up front.

A verb validates all it can before touching the model. What it cannot validate (a user's criterion
callback, a user's module) runs under :class:`ParamSnapshot`: on any error the weights and masks
it covers are put back bit for bit (masks it created are removed, hooks with them).

Example:
    >>> import torch
    >>> layer = torch.nn.Linear(4, 2)
    >>> before = layer.weight.detach().clone()
    >>> snap = ParamSnapshot([(layer, "weight")])
    >>> with torch.no_grad():
    ...     _ = layer.weight.zero_()
    >>> snap.restore()
    >>> torch.equal(layer.weight, before)
    True
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import torch
from torch import nn

from prunekit.core.masks import get_mask, remove_mask, set_mask
from prunekit.errors import ConfigError


class ParamSnapshot:
    """Copies of some parameters and their masks (``None`` when unmasked)."""

    def __init__(self, items: Iterable[tuple[nn.Module, str]]) -> None:
        self.items: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor | None]] = []
        seen: set[tuple[int, str]] = set()
        for module, name in items:
            if (id(module), name) in seen:
                continue
            seen.add((id(module), name))
            mask = get_mask(module, name)
            param = getattr(module, name)
            self.items.append((module, name, param.detach().clone(), None if mask is None else mask.clone()))

    def restore(self) -> None:
        """Put every covered parameter and mask back as it was."""
        with torch.no_grad():
            for module, name, value, mask in self.items:
                if mask is None:
                    remove_mask(module, name)
                else:
                    current = get_mask(module, name)
                    if (
                        current is not None
                        and current.shape == mask.shape
                        and current.stride() == mask.stride()
                    ):
                        current.copy_(mask)
                    else:
                        remove_mask(module, name)
                        set_mask(module, name, mask)
                getattr(module, name).data.copy_(value)


@contextmanager
def restored_on_error(items: Iterable[tuple[nn.Module, str]]) -> Iterator[ParamSnapshot]:
    """Run the block; if it raises, restore the snapshot of ``items`` and re-raise."""
    snap = ParamSnapshot(items)
    try:
        yield snap
    except BaseException:
        snap.restore()
        raise


_BUSY: dict[int, str] = {}
_BUSY_LOCK = threading.Lock()


@contextmanager
def exclusive(model: nn.Module, verb: str) -> Iterator[None]:
    """Refuse a second verb on the same model at the same time (another thread) with a clear error.

    Verbs that change a model's structure take this; a forward pass in another thread while the
    model is being pruned is not supported (see the docs): run pruning between forward passes.

    Raises:
        ConfigError: another prunekit verb is already changing ``model``.
    """
    with _BUSY_LOCK:
        other = _BUSY.get(id(model))
        if other is not None:
            raise ConfigError(
                f"{verb}: {type(model).__name__} is being changed by {other} in another thread; "
                "prune a model from one thread at a time, between forward passes"
            )
        _BUSY[id(model)] = verb
    try:
        yield
    finally:
        with _BUSY_LOCK:
            _BUSY.pop(id(model), None)


F = TypeVar("F", bound=Callable[..., Any])


def exclusive_verb(verb: str) -> Callable[[F], F]:
    """Decorate a verb whose first argument is the model: :func:`exclusive`, and while it runs a forward
    of that model from ANOTHER thread raises a clear ``ConfigError`` instead of failing on half-changed
    shapes. (A forward already running when the verb starts cannot be stopped: do not prune a model
    that another thread is using.)"""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
            owner = threading.get_ident()

            def refuse(module: nn.Module, inputs: Any) -> None:
                if threading.get_ident() != owner:
                    raise ConfigError(
                        f"{type(module).__name__} is being changed by {verb} in another thread; "
                        "run its forward before or after pruning, not during"
                    )

            with exclusive(model, verb):
                handle = model.register_forward_pre_hook(refuse) if isinstance(model, nn.Module) else None
                try:
                    return fn(model, *args, **kwargs)
                finally:
                    if handle is not None:
                        handle.remove()

        return cast(F, run)

    return wrap


__all__ = ["ParamSnapshot", "exclusive", "exclusive_verb", "restored_on_error"]
