"""Special cases: a custom autograd Function, mixture-of-experts routing, frozen parameters, small CNN."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cnn import make_resnet_basic
from .common import Inputs, conv_bn, finish, img


class ScaledTanh(torch.autograd.Function):
    """A custom op the tracer cannot see through: its channels must be frozen, with a warning."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = torch.tanh(x) * 1.5
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1.5 - y * y / 1.5)


class CustomFunctionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 16)
        self.conv_a = nn.Conv2d(16, 16, 3, 1, 1)  # goes through ScaledTanh: frozen
        self.conv_b = nn.Conv2d(16, 24, 3, 1, 1)  # ordinary path: prunable
        self.conv_b2 = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        a = ScaledTanh.apply(self.conv_a(x))
        b = self.conv_b2(F.relu(self.conv_b(x)))
        return self.fc((a + b).mean((2, 3)))


def make_custom_function() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    return finish(CustomFunctionNet(), img())


# --------------------------------------------------------------------------- data-dependent branch + MoE


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoENet(nn.Module):
    """Top-1 routed experts (expert 3 never chosen: its router bias is -1e4) and a data-dependent branch."""

    def __init__(self, dim: int = 16, hidden: int = 32, n_experts: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.router = nn.Linear(dim, n_experts)
        with torch.no_grad():
            self.router.bias[-1] = -1e4
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(n_experts)])
        self.pos_branch = nn.Linear(dim, dim)  # taken when the mean is positive
        self.neg_branch = nn.Linear(dim, dim)  # never taken by the example inputs
        self.out = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)  # (T, D)
        choice = self.router(h).argmax(-1)
        y = torch.zeros_like(h)
        for i, expert in enumerate(self.experts):
            sel = choice == i
            if sel.any():
                y[sel] = expert(h[sel])
        h = h + y
        h = self.pos_branch(h) if bool(x.mean() > -10.0) else self.neg_branch(h)
        return self.out(F.relu(h))


def make_moe() -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(5))
    return finish(MoENet(), x)


# --------------------------------------------------------------------------- frozen


def make_frozen() -> tuple[nn.Module, Inputs]:
    """ResNet basic with every parameter ``requires_grad=False`` (autograd-walk tools see nothing)."""
    model, inputs = make_resnet_basic()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, inputs


# --------------------------------------------------------------------------- Hugging Face


def small_cnn() -> nn.Sequential:
    """A seeded Conv-BN-ReLU / Linear chain on (N, 1, H, W) inputs, 3 classes (schedule and pruner tests)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


class Branches(nn.Module):
    """y = sum_i scale_i * branch_i(x): the sensitivity of each branch differs by construction."""

    def __init__(
        self, scales: tuple[float, ...] = (0.05, 0.3, 1.0, 3.0), features: tuple[int, int] = (16, 4)
    ) -> None:
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(nn.Linear(*features) for _ in scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(s * b(x) for s, b in zip(self.scales, self.branches, strict=True))  # type: ignore[return-value]
