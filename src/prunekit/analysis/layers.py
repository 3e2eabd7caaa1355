"""Which layers sensitivity analysis prunes, how one layer is masked, and each layer's MACs.

:func:`select_layers` resolves ``include``/``exclude`` (names, globs, module types) to the prunable
layers (:data:`PRUNABLE_TYPES`); :func:`keep_mask` turns scores into the keep-mask of a ratio at
``layer`` or ``channel`` granularity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.core import (
    PRUNABLE_TYPES,
    EvalMode,
    batch_size,
    call_model,
    matches,
    model_device,
    select_modules,
    to_device,
    weight_of,
)


def matches_spec(name: str, module: nn.Module, spec: Any) -> bool:
    """True if ``spec`` selects the module ``name`` (see :func:`prunekit.core.matches`)."""
    return matches(name, module, spec)


def select_layers(
    model: nn.Module, include: Iterable[Any] | None = None, exclude: Iterable[Any] | None = None
) -> list[tuple[str, nn.Module]]:
    """Prunable ``(name, module)`` pairs: Linear/Conv by default, filtered by names/globs/types/modules.

    Selection is :func:`prunekit.core.select_modules` (a name also covers the layers inside it).
    A weight shared by several modules (tied weights) is listed once, under its first name.
    """
    inc = {n for n, _ in select_modules(model, include, what="include", children=True)}
    exc = {n for n, _ in select_modules(model, exclude, what="exclude", children=True)}
    seen: set[int] = set()
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim < 2:
            continue
        chosen = name in inc if include is not None else isinstance(module, PRUNABLE_TYPES)
        if not chosen or name in exc or id(weight) in seen:
            continue
        seen.add(id(weight))
        out.append((name, module))
    return out


def keep_mask(scores: torch.Tensor, ratio: float, granularity: str) -> torch.Tensor:
    """Bool mask (shape of ``scores``) keeping all but the ``round(ratio * units)`` lowest units.

    ``units`` are single weights (``granularity="layer"``) or output channels, i.e. rows along
    dim 0 scored by the sum of their entries (``"channel"``). Ties break by position (stable sort).
    """
    unit_scores = scores.flatten() if granularity == "layer" else scores.reshape(scores.shape[0], -1).sum(1)
    k = int(round(ratio * unit_scores.numel()))
    keep = torch.ones(unit_scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.sort(unit_scores.double(), stable=True).indices
        keep[order[:k]] = False
    if granularity == "layer":
        return keep.view_as(scores)
    return keep.view(-1, *([1] * (scores.ndim - 1))).expand_as(scores)


def masked_scores(module: nn.Module, scores: torch.Tensor, granularity: str) -> torch.Tensor:
    """Already-pruned weights (a prunekit mask) count as pruned first (weights) or add nothing (channels)."""
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == scores.shape:
        scores = scores.masked_fill(~mask, -math.inf if granularity == "layer" else 0.0)
    return scores


def layer_macs(model: nn.Module, batch_inputs: Any, names: Sequence[str]) -> dict[str, int]:
    """Per-example multiply-accumulates of each named Linear/Conv layer, from one recorded forward."""
    modules = dict(model.named_modules())
    macs: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or name in macs:
                return
            w = weight_of(module)  # every output element costs one dot product over w[0]
            macs[name] = out.numel() * w[0].numel() // max(1, n_examples)

        return fn

    n_examples = batch_size(batch_inputs)
    for name in names:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), EvalMode(model):
            call_model(model, to_device(batch_inputs, model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return {n: macs.get(n, 0) for n in names}
