"""Pieces shared by the methods: optimizer factories and mask assignment."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.core import get_mask, masked_parameters, set_mask
from prunekit.errors import ConfigError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
OptimizerLike = torch.optim.Optimizer | OptimizerFactory


def check_optimizer(optimizer: object) -> None:
    """Raise :class:`ConfigError` unless ``optimizer`` is an optimizer or a callable factory."""
    if not isinstance(optimizer, torch.optim.Optimizer) and not callable(optimizer):
        raise ConfigError(
            "optimizer must be a torch.optim.Optimizer or a factory like "
            f"lambda params: torch.optim.SGD(params, lr=0.1); got {type(optimizer).__name__}"
        )


def make_optimizer(optimizer: OptimizerLike, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer itself, or a fresh one from a factory ``f(model.parameters())``."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        opt = optimizer(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(
                f"the optimizer factory returned {type(opt).__name__}, expected a torch.optim.Optimizer"
            )
        return opt
    raise ConfigError(
        f"optimizer must be a torch.optim.Optimizer or a factory like lambda params: torch.optim.SGD(params, lr=0.1); "
        f"got {type(optimizer).__name__}"
    )


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{fqn: mask clone}`` of every masked parameter."""
    return {mp.fqn: mp.mask.clone() for mp in masked_parameters(model)}


@torch.no_grad()
def assign_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Put exactly ``masks`` in force (replacing, not AND-ing, existing masks) and zero the pruned weights."""
    modules = dict(model.named_modules())
    for fqn, mask in masks.items():
        module_name, _, pname = fqn.rpartition(".")
        module = modules[module_name]
        existing = get_mask(module, pname)
        if existing is None:
            set_mask(module, pname, mask)
        else:
            existing.copy_(mask)
            getattr(module, pname).mul_(existing)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of masked-out entries over the masked parameters."""
    total = pruned = 0
    for mp in masked_parameters(model):
        total += mp.mask.numel()
        pruned += mp.mask.numel() - int(mp.mask.sum())
    return pruned / total if total else 0.0


__all__ = [
    "OptimizerLike",
    "assign_masks",
    "check_optimizer",
    "current_masks",
    "make_optimizer",
    "weight_sparsity",
]
