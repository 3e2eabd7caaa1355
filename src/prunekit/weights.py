"""Weight (unstructured) pruning.  PROVISIONAL minimal version: the contract signature is final,
the internals (criteria objects, bounded-memory global threshold, N:M, reports) are being built."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import get_mask, masked_parameters, set_mask

_DEFAULT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _DEFAULT_TYPES)]


def prune_weights(
    model: nn.Module,
    sparsity: float = 0.5,
    *,
    criterion: Any = "magnitude",
    scope: str = "global",
    pattern: str | None = None,
    include: Iterable[Any] | None = None,
    exclude: Iterable[Any] | None = None,
    data: Any = None,
    loss_fn: Any = None,
) -> Any:
    """Prune individual weights in place (provisional: magnitude only)."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    targets = _targets(model)
    scores = []
    for _, m in targets:
        mask = get_mask(m, "weight")
        s = m.weight.detach().abs().clone()
        if mask is not None:
            s[~mask] = -1.0
        scores.append(s)
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores])
        k = int(round(sparsity * flat.numel()))
        thr = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        for (_, m), s in zip(targets, scores):
            set_mask(m, "weight", s > thr)
    else:
        for (_, m), s in zip(targets, scores):
            k = int(round(sparsity * s.numel()))
            thr = s.flatten().kthvalue(k).values if k > 0 else s.min() - 1
            set_mask(m, "weight", s > thr)
    return None


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over the prunable weights."""
    total = zeros = 0
    for _, m in _targets(model):
        total += m.weight.numel()
        zeros += m.weight.numel() - int(torch.count_nonzero(m.weight))
    return zeros / total if total else 0.0


__all__ = ["prune_weights", "sparsity"]
