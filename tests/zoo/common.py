"""Shared pieces of the test zoo: types, deterministic BatchNorm statistics, small building blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Inputs = tuple[Any, ...]
Factory = Callable[[], tuple[nn.Module, Inputs]]


def bn_randomize(model: nn.Module) -> None:
    """Give BatchNorms non-trivial affine parameters and running stats (a masked BN shift must leak)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                with torch.no_grad():
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def finish(model: nn.Module, *inputs: Any) -> tuple[nn.Module, Inputs]:
    bn_randomize(model)
    return model.eval(), tuple(inputs)


def img(c: int = 3, hw: int = 16, b: int = 2) -> Tensor:
    return torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(123))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


# --------------------------------------------------------------------------- ResNet
