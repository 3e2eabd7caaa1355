"""User coupling rules (pk.register_coupling_rule): an op or module the graph does not know becomes prunable.

Pruned models are checked against the independent masked oracle (tests/oracle.py) with ``check=False``,
so prune_channels' own check cannot hide a wrong rule.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from oracle import kept_from_plan
from oracle import masked_reference as independent_reference


class RowScaledMatmul(torch.autograd.Function):
    """y = x @ w.T * s: a custom Function, opaque to the recorder."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return (x @ w.t()) * s

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:  # pragma: no cover - not used
        raise NotImplementedError


class ScaledLinear(nn.Module):
    """A layer the graph cannot see into (it calls a custom autograd Function)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / cin**0.5)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RowScaledMatmul.apply(x, self.weight, self.scale)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.mid = ScaledLinear(8, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.mid(F.relu(self.a(x)))))


def scaled_linear_rule(ctx: pk.CouplingContext) -> None:
    w, s = ctx.params["weight"], ctx.params["scale"]
    ctx.couple(ctx.inputs[0], -1, w, 1)  # input features = weight columns
    ctx.couple(w, 0, s, 0)  # each output row goes with its scale
    ctx.couple(w, 0, ctx.outputs[0], -1)  # and is an output feature


@pytest.fixture
def registered() -> Iterator[None]:
    pk.register_coupling_rule(ScaledLinear, scaled_linear_rule)
    try:
        yield
    finally:
        pk.unregister_coupling_rule(ScaledLinear)


def _check_oracle(model: nn.Module, orig: nn.Module, res: Any) -> None:
    x = torch.randn(7, 5)
    ref = independent_reference(orig, kept_from_plan(res.plan))
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-4)


def test_unregistered_module_stays_frozen_with_warning() -> None:
    torch.manual_seed(0)
    model = Net()
    with pytest.warns(UserWarning, match="RowScaledMatmul"):
        res = pk.prune_channels(model, torch.randn(2, 5), ratio=0.5, check=False)
    assert (model.a.out_features, model.mid.weight.shape) == (8, (6, 8))
    assert any("RowScaledMatmul" in s.reason for s in res.skipped)


def test_module_rule_makes_it_prunable_and_matches_oracle(registered: None) -> None:
    torch.manual_seed(0)
    model = Net()
    orig = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot see through" warning any more
        res = pk.prune_channels(model, torch.randn(2, 5), ratio=0.5, check=False)
    assert model.a.out_features == 4 and model.mid.weight.shape == (3, 4) and model.mid.scale.shape == (3,)
    assert model.out.in_features == 3
    kept = kept_from_plan(res.plan)
    assert set(kept) >= {"a.weight", "mid.weight", "mid.scale", "out.weight"}
    _check_oracle(model, orig, res)


def test_rule_leaves_unmentioned_dims_frozen(registered: None) -> None:
    def half_rule(ctx: pk.CouplingContext) -> None:  # says nothing about the weight's input dim
        w, s = ctx.params["weight"], ctx.params["scale"]
        ctx.couple(w, 0, s, 0)
        ctx.couple(w, 0, ctx.outputs[0], -1)

    pk.register_coupling_rule(ScaledLinear, half_rule)
    torch.manual_seed(0)
    model = Net()
    orig = copy.deepcopy(model)
    res = pk.prune_channels(model, torch.randn(2, 5), ratio=0.5, check=False)
    assert model.a.out_features == 8 and model.mid.weight.shape == (3, 8)
    _check_oracle(model, orig, res)


class Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not used
        return g * 2


class WithTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.relu(self.b(Twice.apply(self.a(x)))))


@pytest.mark.parametrize("target", ["autograd.Function:Twice", Twice])
def test_op_name_rule(target: Any) -> None:
    pk.register_coupling_rule(target, lambda ctx: ctx.elementwise(ctx.inputs[0], ctx.outputs[0]))
    try:
        assert "autograd.Function:Twice" in pk.graph.coupling_rules()
        torch.manual_seed(0)
        model = WithTwice()
        orig = copy.deepcopy(model)
        res = pk.prune_channels(model, torch.randn(2, 3), ratio=0.5, check=False)
        assert model.a.out_features == 3 and model.b.in_features == 3
        x = torch.randn(4, 3)
        ref = independent_reference(orig, kept_from_plan(res.plan))
        torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-4)
    finally:
        pk.unregister_coupling_rule(target)
    assert "autograd.Function:Twice" not in pk.graph.coupling_rules()


def test_bad_registrations_and_size_mismatch(registered: None) -> None:
    with pytest.raises(pk.ConfigError, match="target must be"):
        pk.register_coupling_rule(3, scaled_linear_rule)  # type: ignore[arg-type]
    with pytest.raises(pk.ConfigError, match="callable"):
        pk.register_coupling_rule("x", None)  # type: ignore[arg-type]

    def wrong(ctx: pk.CouplingContext) -> None:
        ctx.couple(ctx.inputs[0], -1, ctx.params["weight"], 0)  # 8 inputs vs 6 rows

    pk.register_coupling_rule(ScaledLinear, wrong)
    model = Net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(pk.ConfigError, match="sizes 8 and 6"):
        pk.prune_channels(model, torch.randn(2, 5), ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
