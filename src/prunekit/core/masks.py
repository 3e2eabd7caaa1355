"""Masks: one bool buffer per pruned parameter, kept in force through training.

A masked parameter is an ordinary ``nn.Parameter`` whose pruned entries are exactly zero,
plus a bool buffer ``<name>_mask`` on the same module (``True`` = kept)::

    module.weight        Parameter (same object, same id, zeros where pruned)
    module.weight_mask   bool buffer (1 byte per weight; no ``weight_orig`` copy)

Zeros are kept in force by three small hooks, none of which copies a weight:

* a global optimizer step post-hook re-applies the mask after every ``optimizer.step()``
  (so SGD momentum, Adam moments and weight decay cannot revive a pruned weight);
* a ``load_state_dict`` post-hook re-applies it after loading dense weights;
* a forward pre-hook re-registers the parameter after ``copy.deepcopy``/``pickle``
  (the registry the optimizer hook reads is keyed by parameter identity).

Because the mask is a buffer, ``state_dict``, ``deepcopy``, ``pickle``, ``torch.jit.trace``
and ``torch.compile`` all work; :func:`make_permanent` removes every trace of pruning state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

MASK_SUFFIX = "_mask"

# param -> its mask. Read after every optimizer step; keyed by identity, never by value.
_REGISTRY: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def _zero_pruned(param: torch.Tensor, mask: torch.Tensor) -> None:
    """``param[~mask] = +0.0`` in place, without a temporary (``mul_`` by a bool mask allocates a float copy)."""
    torch.where(mask, param, param.new_zeros(()), out=param)


def _reapply_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if not len(_REGISTRY):
        return
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                mask = _REGISTRY.get(p)  # type: ignore[no-untyped-call]
                if mask is not None:
                    _zero_pruned(p, mask)


_STEP_HOOK = register_optimizer_step_post_hook(_reapply_after_step)


class _MaskKeeper:
    """Module hook object (picklable): registers masked params and re-applies masks on load."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    def __call__(self, module: nn.Module, *args: Any) -> None:
        if _is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():  # type: ignore[attr-defined,no-untyped-call]
            return
        for name in self.names:
            param = getattr(module, name)
            mask = getattr(module, name + MASK_SUFFIX)
            if _REGISTRY.get(param) is not mask:  # type: ignore[no-untyped-call]
                _REGISTRY[param] = mask

    def reapply(self, module: nn.Module, incompatible_keys: Any = None) -> None:
        with torch.no_grad():
            for name in self.names:
                _zero_pruned(getattr(module, name), getattr(module, name + MASK_SUFFIX))
        self(module)


def _keeper(module: nn.Module) -> _MaskKeeper | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _MaskKeeper):
            return hook
    return None


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Put ``mask`` in force on ``module.<name>`` in place: zero the pruned entries, keep them zero.

    A parameter that is already masked gets the logical AND of both masks, so pruning again
    raises sparsity cumulatively. ``id(param)`` does not change.

    Args:
        module: the module owning the parameter.
        name: the parameter's attribute name, e.g. ``"weight"``.
        mask: bool tensor of the parameter's shape; ``True`` keeps an entry.

    Raises:
        ValueError: if the mask's shape differs from the parameter's.
    """
    param = getattr(module, name)
    if not isinstance(param, nn.Parameter):
        raise TypeError(
            f"{type(module).__name__}.{name} is not an nn.Parameter; only parameters can be masked"
        )
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"mask for {type(module).__name__}.{name} has shape {tuple(mask.shape)}, "
            f"expected the parameter's shape {tuple(param.shape)}"
        )
    mask = mask.to(device=param.device, dtype=torch.bool)
    buffer_name = name + MASK_SUFFIX
    old = getattr(module, buffer_name, None)
    with torch.no_grad():
        if isinstance(old, torch.Tensor):
            old.logical_and_(mask)  # keep the buffer object: optimizer/registry references stay valid
            mask = old
        else:
            module.register_buffer(buffer_name, mask.clone())
            mask = getattr(module, buffer_name)
        _zero_pruned(param, mask)
    keeper = _keeper(module)
    if keeper is None:
        keeper = _MaskKeeper([name])
        module.register_forward_pre_hook(keeper)
        module.register_load_state_dict_post_hook(keeper.reapply)  # type: ignore[no-untyped-call]
    elif name not in keeper.names:
        keeper.names.append(name)
    _REGISTRY[param] = mask


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The bool mask of ``module.<name>``, or ``None`` if it is not masked."""
    mask = getattr(module, name + MASK_SUFFIX, None)
    keeper = _keeper(module)
    if isinstance(mask, torch.Tensor) and keeper is not None and name in keeper.names:
        return mask
    return None


@dataclass(frozen=True)
class MaskedParam:
    """One masked parameter: where it lives and its tensors."""

    module_name: str
    module: nn.Module
    name: str
    param: nn.Parameter
    mask: torch.Tensor

    @property
    def fqn(self) -> str:
        return f"{self.module_name}.{self.name}" if self.module_name else self.name


def masked_parameters(model: nn.Module) -> Iterator[MaskedParam]:
    """Every masked parameter of ``model``, in module order."""
    for module_name, module in model.named_modules():
        keeper = _keeper(module)
        if keeper is None:
            continue
        for name in keeper.names:
            yield MaskedParam(
                module_name, module, name, getattr(module, name), getattr(module, name + MASK_SUFFIX)
            )


def refresh(model: nn.Module) -> None:
    """Re-apply every mask of ``model`` and re-register its parameters (after manual weight edits)."""
    for module in model.modules():
        keeper = _keeper(module)
        if keeper is not None:
            keeper.reapply(module)


def remove_mask(module: nn.Module, name: str) -> None:
    """Drop the mask of ``module.<name>``; the weights keep their current values."""
    keeper = _keeper(module)
    if keeper is None or name not in keeper.names:
        return
    param = getattr(module, name)
    _REGISTRY.pop(param, None)  # type: ignore[no-untyped-call]
    keeper.names.remove(name)
    delattr(module, name + MASK_SUFFIX)
    if not keeper.names:
        for hooks in (module._forward_pre_hooks, module._load_state_dict_post_hooks):
            for key, hook in list(hooks.items()):
                if hook is keeper or getattr(hook, "__self__", None) is keeper:
                    del hooks[key]


def make_permanent(model: nn.Module) -> int:
    """Bake masks into plain weights in place and remove all pruning state; return how many were baked.

    The zeros stay in the weights; the mask buffers and hooks are gone, so the ``state_dict``
    holds only the original keys and the model no longer keeps pruned weights at zero in training.

    Example:
        >>> import torch, prunekit as pk
        >>> layer = torch.nn.Linear(4, 4)
        >>> from prunekit.core.masks import set_mask
        >>> set_mask(layer, "weight", torch.rand(4, 4) > 0.5)
        >>> pk.make_permanent(layer)
        1
        >>> sorted(layer.state_dict())
        ['bias', 'weight']
    """
    count = 0
    for mp in list(masked_parameters(model)):
        with torch.no_grad():
            _zero_pruned(mp.param, mp.mask)
        remove_mask(mp.module, mp.name)
        count += 1
    return count


__all__ = [
    "MASK_SUFFIX",
    "MaskedParam",
    "get_mask",
    "make_permanent",
    "masked_parameters",
    "refresh",
    "remove_mask",
    "set_mask",
]
