"""Batches and evaluation for sensitivity analysis: move batches, call the model, average the loss.

Inputs may be a tensor, a tuple of positional args or a dict of keyword args; targets may be
``None``. :func:`evaluate` runs in eval mode under ``torch.no_grad`` and restores the train/eval flags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, DataRequiredError


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments, a tuple/list as positional ones."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_size(inputs: Any, targets: Any = None) -> int:
    """Number of examples in a batch: the length of the first tensor found."""
    for obj in (targets, inputs):
        if isinstance(obj, torch.Tensor) and obj.ndim > 0:
            return int(obj.shape[0])
        if isinstance(obj, Mapping):
            obj = list(obj.values())
        if isinstance(obj, (tuple, list)):
            for v in obj:
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    return int(v.shape[0])
    return 1


def take_batches(data: Any, max_batches: int | None, what: str) -> list[tuple[Any, Any]]:
    """The first ``max_batches`` ``(inputs, targets)`` pairs of ``data``, cached as a list."""
    if data is None:
        raise DataRequiredError(
            f"{what} needs validation data: pass data= as a DataLoader or any iterable of (inputs, targets)"
        )
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be a positive integer or None, got {max_batches}")
    batches: list[tuple[Any, Any]] = []
    for item in islice(iter(data), max_batches):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(
                f"{what}: every batch must be a pair (inputs, targets), got {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                + ". Wrap your data so it yields (inputs, targets); inputs may be a tensor, tuple or dict"
            )
        batches.append((item[0], item[1]))
    if not batches:
        raise DataRequiredError(
            f"{what}: data= yielded no batches; expected at least one (inputs, targets) pair"
        )
    return batches


class _EvalMode:
    """Put every module in eval mode and restore each module's own ``training`` flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self.flags:
            m.training = flag


def evaluate(
    model: nn.Module,
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
    metric: Callable[[Any, Any], Any] | None = None,
) -> tuple[float, float | None]:
    """Example-weighted mean loss (and metric) of ``model`` over ``batches``, without gradients."""
    device = _device(model)
    total = loss_sum = metric_sum = 0.0
    with torch.no_grad():
        for inputs, targets in batches:
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            out = call_model(model, inputs)
            n = batch_size(inputs, targets)
            loss_sum += float(loss_fn(out, targets)) * n
            if metric is not None:
                metric_sum += float(metric(out, targets)) * n
            total += n
    return loss_sum / total, (metric_sum / total if metric is not None else None)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to prune")
    return weight


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
