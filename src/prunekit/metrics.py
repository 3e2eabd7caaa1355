"""Measurements: parameters, non-zeros, MACs.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention; elementwise
ops are not counted, as is usual); one multiply-accumulate = 2 FLOPs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_nonzeros(model: nn.Module) -> int:
    """Number of non-zero parameter elements (shared parameters counted once)."""
    return sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values())


def _as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (a tensor, tuple or kwargs dict)."""
    args, kwargs = _as_args(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


__all__ = ["count_macs", "count_nonzeros", "count_params"]
