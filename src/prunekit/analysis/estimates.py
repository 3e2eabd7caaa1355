"""Importance scores and one-pass estimates of the loss increase (no pruned forward needed).

Criteria (:data:`CRITERIA`) give elementwise scores; low scores are pruned first. From per-batch
gradients ``g_b`` of the loss, :func:`grad_stats` returns the mean gradient ``G`` and the empirical
Fisher diagonal ``F = mean_b(g_b**2)``; the estimators (:data:`ESTIMATORS`) predict the loss increase
of removing a set ``S`` of weights:

* first-order Taylor:  ``sum_{w in S} |G * w|``;
* Fisher (second order): ``sum_{w in S} 1/2 * F * w**2`` (up to a constant factor: only the ranking
  across layers matters).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from prunekit.core import (
    batch_size,
    call_model,
    criterion_registry,
    model_device,
    to_device,
    weight_of,
)
from prunekit.errors import ConfigError

ESTIMATORS: tuple[str, ...] = ("taylor", "fisher")


class SensitivityCriterion(Protocol):
    """Scores the entries of one weight tensor; the lowest-scoring ones are pruned first.

    ``grad`` is the mean gradient and ``fisher`` the empirical Fisher diagonal of the weight
    (both from the one-pass estimate), ``name`` the module's qualified name.
    """

    def __call__(
        self, weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor
    ) -> torch.Tensor: ...


def _magnitude(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return weight.abs()


def _l2(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return weight.square()


def _random(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # same draw for a layer every time
    return torch.rand(weight.shape, generator=gen).to(weight.device)


def _taylor(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return (grad * weight).abs()


def _fisher(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return 0.5 * fisher * weight.square()


CRITERIA = criterion_registry("sensitivity")
for _name, _fn in (
    ("fisher", _fisher),
    ("l2", _l2),
    ("magnitude", _magnitude),
    ("random", _random),
    ("taylor", _taylor),
):
    CRITERIA.register(_name, _fn, overwrite=False)


def resolve_criterion(criterion: str | SensitivityCriterion) -> tuple[str, SensitivityCriterion]:
    """``(name, callable)`` for a registry name or a user callable."""
    if isinstance(criterion, str):
        return criterion, CRITERIA.lookup(criterion)
    if callable(criterion):
        return getattr(criterion, "__name__", type(criterion).__name__), criterion
    raise ConfigError(
        f"criterion must be a name ({', '.join(sorted(CRITERIA))}) or a callable, got {criterion!r}"
    )


def one_pass(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean gradient and empirical Fisher diagonal of every layer's weight, without touching ``.grad``."""
    return grad_stats(model, [weight_of(m) for _, m in layers], batches, loss_fn)


def grad_stats(
    model: nn.Module,
    weights: Sequence[torch.Tensor],
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean gradient and empirical Fisher diagonal of each tensor in ``weights``, without touching ``.grad``."""
    flags: list[bool] = [bool(w.requires_grad) for w in weights]
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    device = model_device(model)
    total = sum(batch_size(i, t) for i, t in batches)
    try:
        for w in weights:
            w.requires_grad_(True)
        for inputs, targets in batches:
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with torch.enable_grad():
                loss = loss_fn(call_model(model, inputs), targets)
                gs = torch.autograd.grad(loss, weights, allow_unused=True)
            n = batch_size(inputs, targets)
            for g_sum, f_sum, g in zip(grads, fisher, gs, strict=False):
                if g is not None:
                    g_sum.add_(g.float(), alpha=n / total)
                    f_sum.add_(g.float().square(), alpha=1.0 / len(batches))
    finally:
        for w, flag in zip(weights, flags, strict=False):
            w.requires_grad_(flag)
    return grads, fisher
