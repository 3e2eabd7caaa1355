"""Applying an allocation plan (per-layer ratios) to a model: weights through prune_weights, channels masked or removed physically through prune_channels; per-layer latency for latency targets."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.analysis.estimates import CRITERIA
from prunekit.analysis.layers import keep_mask, select_layers
from prunekit.core import (
    EvalMode,
    call_model,
    to_device,
    weight_of,
)
from prunekit.errors import ConfigError, UnknownModuleError


def apply_allocation(
    model: nn.Module,
    plan: Mapping[str, float],
    *,
    data: Any = None,
    loss_fn: Any = None,
    example_inputs: Any = None,
    physical: bool = False,
) -> dict[str, float]:
    """Prune ``model`` in place with the per-layer ratios of ``plan``; return the applied ratios.

    Weight plans (``granularity="layer"``) call ``prune_weights(model, ratio, scope="layer",
    include=[name])`` once per layer with the plan's criterion. Channel plans zero each layer's
    lowest-scoring output channels (weight rows and bias) with masks, or, with ``physical=True``,
    remove them: one ``prune_channels(model, example_inputs, ratio=r, scope="layer",
    exclude=<every other Linear/Conv>)`` call per layer (coupled slices go with them).

    Args:
        model: the model the sensitivity analysis ran on.
        plan: an :class:`AllocationPlan` or any ``{module_name: ratio}`` mapping (weight pruning).
        data: forwarded to ``prune_weights`` for data-aware criteria.
        loss_fn: forwarded to ``prune_weights`` for data-aware criteria.
        example_inputs: needed by ``physical=True``.
        physical: remove channels physically through ``prune_channels`` (channel plans only).

    Raises:
        UnknownModuleError: a plan entry names no module of ``model`` (nothing is pruned then).
        ConfigError: a ratio outside [0, 1), or ``physical=True`` without structured pruning.
    """
    from prunekit.weights import prune_weights

    modules = dict(model.named_modules())
    missing = [n for n in plan if n not in modules]
    if missing:
        raise UnknownModuleError(f"plan names modules that {type(model).__name__} does not have: {missing}")
    bad = {n: r for n, r in plan.items() if not 0.0 <= float(r) < 1.0}
    if bad:
        raise ConfigError(f"plan ratios must be in [0, 1), got {bad}")
    granularity = getattr(plan, "granularity", "layer")
    criterion = getattr(plan, "criterion", "magnitude")
    applied = {n: float(r) for n, r in plan.items() if float(r) > 0}
    prunable_names = [n for n, _ in select_layers(model)]
    not_prunable = [n for n in applied if n not in prunable_names]
    if not_prunable:  # checked before anything is pruned, so a bad plan never half-applies
        raise ConfigError(
            f"plan names modules that are not prunable layers (Linear/Conv weights): {not_prunable}; "
            f"prunable layers of {type(model).__name__}: {prunable_names[:8]}"
            f"{' ...' if len(prunable_names) > 8 else ''}. Remove them from the plan"
        )
    from prunekit.core import restored_on_error

    covered = [
        (modules[n], p)
        for n in applied
        for p in ("weight", "bias")
        if isinstance(getattr(modules[n], p, None), nn.Parameter)
    ]
    if granularity == "channel":
        if physical:
            from prunekit.structured import prune_channels

            if example_inputs is None:
                raise ConfigError("physical=True needs example_inputs= (one batch) to trace the model")
            crit = {"magnitude": "l1", "l2": "l2", "random": "random"}.get(str(criterion), "l2")
            prunable = [n for n, _ in select_layers(model)]
            for name, ratio in applied.items():  # one traced call per layer: its own ratio, others kept
                others = [n for n in prunable if n != name]
                prune_channels(
                    model, example_inputs, ratio=ratio, scope="layer", criterion=crit, exclude=others or None
                )
        else:
            with restored_on_error(covered):
                mask_channels(modules, applied, str(criterion))
        return applied
    if criterion == "l2":  # same order as |w| for single weights
        criterion = "magnitude"
    with restored_on_error(covered):
        for name, ratio in applied.items():
            prune_weights(
                model, ratio, criterion=criterion, scope="layer", include=[name], data=data, loss_fn=loss_fn
            )
    return applied


def mask_channels(modules: Mapping[str, nn.Module], ratios: Mapping[str, float], criterion: str) -> None:
    """Zero the lowest-scoring output channels (weight rows and bias) of each layer with masks."""
    from prunekit.core import set_mask

    if criterion not in ("magnitude", "l2", "random"):
        raise ConfigError(
            f"channel masks can be chosen by magnitude, l2 or random, not {criterion!r} (it needs gradients); "
            "analyse with one of those, or remove channels with physical=True"
        )
    for name, ratio in ratios.items():
        module = modules[name]
        weight = weight_of(module)
        empty = torch.zeros(0)
        scores = CRITERIA[criterion](weight.detach().float(), name=name, grad=empty, fisher=empty)
        keep = keep_mask(scores, ratio, "channel")
        set_mask(module, "weight", keep)
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            set_mask(module, "bias", keep.reshape(keep.shape[0], -1)[:, 0].clone())


def layer_latency(
    model: nn.Module,
    example_inputs: Any,
    names: Sequence[str] | None = None,
    *,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, float]:
    """Median wall time (seconds) of each named layer's forward inside a full forward pass.

    Args:
        model: the model.
        example_inputs: a tensor, tuple of positional arguments or dict of keyword arguments.
        names: layers to time: names, globs, types or modules (default: every Linear/Conv).
        repeats: timed forward passes; the median per layer is returned.
        warmup: untimed forward passes first.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    modules = dict(model.named_modules())
    chosen = [n for n, _ in select_layers(model, names)]
    samples: dict[str, list[float]] = {n: [] for n in chosen}
    starts: dict[str, float] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any) -> None:
            starts[name] = time.perf_counter()

        return fn

    def post(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, out: Any) -> None:
            samples[name].append(time.perf_counter() - starts[name])

        return fn

    try:
        with torch.no_grad(), EvalMode(model):
            inputs = to_device(example_inputs, next(model.parameters()).device)
            for _ in range(warmup):
                call_model(model, inputs)
            for n in chosen:
                handles.append(modules[n].register_forward_pre_hook(pre(n)))
                handles.append(modules[n].register_forward_hook(post(n)))
            for _ in range(repeats):
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: float(torch.tensor(v).median()) if v else 0.0 for n, v in samples.items()}


__all__ = ["apply_allocation", "layer_latency", "mask_channels"]
