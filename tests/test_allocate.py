"""Allocation: hits its target within 1%, is optimal on convex curves, and beats uniform ratios."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from zoo import Branches

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def synthetic(
    slopes: list[float], numels: list[int], macs: list[int] | None = None, power: float = 2.0
) -> pk.SensitivityResult:
    """A result whose curves are ``slope * r**power`` (convex for power >= 1)."""
    macs = macs or numels
    return pk.SensitivityResult.from_dict(
        {
            "baseline_loss": 0.5,
            "layers": [
                {
                    "name": f"l{i}",
                    "numel": n,
                    "units": n,
                    "macs": m,
                    "ratios": list(RATIOS),
                    "loss": [0.5 + s * r**power for r in RATIOS],
                }
                for i, (s, n, m) in enumerate(zip(slopes, numels, macs, strict=True))
            ],
        }
    )


@settings(max_examples=30)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 50.0), st.integers(1000, 50_000), st.integers(1, 10**6)),
        min_size=1,
        max_size=8,
    ),
    st.floats(0.1, 0.85),
    st.sampled_from(["sparsity", "params", "macs"]),
)
def test_allocation_hits_the_target_within_one_percent(
    layers: list[tuple[float, int, int]], target: float, by: str
) -> None:
    """Whole weights are 1/1000 of a layer at most here, so 1% of a target >= 0.1 is reachable."""
    slopes, numels, macs = (list(v) for v in zip(*layers, strict=True))
    res = synthetic(slopes, numels, macs, power=1.5)
    costs = {f"l{i}": float(numels[i] if by != "macs" else macs[i]) for i in range(len(layers))}
    plan = pk.allocate(res, target, by=by)  # type: ignore[arg-type]
    achieved = sum(plan[n] * costs[n] for n in plan) / sum(costs.values())  # recomputed independently
    assert achieved == pytest.approx(plan.achieved, abs=1e-12)
    assert abs(achieved - target) <= 0.01 * target
    assert all(0.0 <= r <= 0.9 + 1e-12 for r in plan.values())
    for n, r in plan.items():  # whole weights only
        assert abs(r * res.layer(n).units - round(r * res.layer(n).units)) < 1e-6


@settings(max_examples=15)
@given(st.lists(st.floats(0.05, 20.0), min_size=3, max_size=3), st.integers(2, 24))
def test_allocation_is_optimal_on_convex_curves(slopes: list[float], steps: int) -> None:
    """Oracle: brute force over a 0.01 grid of three equal-size layers (curves interpolated by numpy)."""
    res = synthetic(slopes, [10_000] * 3)
    target = steps * 0.025
    plan = pk.allocate(res, target)
    xp = np.array((0.0, *RATIOS))

    def curve(s: float, r: float) -> float:
        return float(np.interp(r, xp, s * xp**2))

    best = float("inf")
    grid = [i / 100 for i in range(91)]
    for a, b in itertools.product(grid, grid):
        c = round(3 * target - a - b, 10)
        if 0 <= c <= 0.9:
            best = min(best, sum(curve(s, r) for s, r in zip(slopes, (a, b, c), strict=True)))
    predicted = sum(curve(s, plan[f"l{i}"]) for i, s in enumerate(slopes))
    assert predicted == pytest.approx(plan.predicted_loss_increase, rel=1e-9)
    assert plan.predicted_loss_increase <= best + 1e-9
    assert plan.predicted_loss_increase <= plan.uniform_predicted_loss_increase + 1e-12


def test_doc_example_and_plan_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = synthetic([1.0, 10.0, 100.0], [100, 200, 300])
    plan = pk.allocate(res, 0.5)
    assert plan["l0"] >= plan["l1"] >= plan["l2"]
    again = pk.AllocationPlan.from_dict(plan.to_dict())
    assert again == plan and dict(again) == dict(plan)
    assert "achieved" in str(plan)
    path = plan.to_json(tmp_path / "plan.json")
    import json

    assert pk.AllocationPlan.from_dict(json.loads(path.read_text())) == plan


def test_exclude_latency_and_errors() -> None:
    res = synthetic([1.0, 10.0, 100.0], [100, 100, 100])
    plan = pk.allocate(res, 0.3, exclude=["l0"])
    assert plan["l0"] == 0.0 and plan.achieved == pytest.approx(0.3, rel=0.01)
    lat = {"l0": 1e-3, "l1": 1e-4, "l2": 4e-3}
    plan = pk.allocate(res, 0.4, by="latency", latency=lat)
    achieved = sum(plan[n] * lat[n] for n in plan) / sum(lat.values())
    assert achieved == pytest.approx(0.4, rel=0.01)
    with pytest.raises(pk.ConfigError, match="latency"):
        pk.allocate(res, 0.4, by="latency")
    with pytest.raises(pk.ConfigError, match="target"):
        pk.allocate(res, 1.2)
    with pytest.raises(pk.ConfigError, match="by must be"):
        pk.allocate(res, 0.5, by="flops")  # type: ignore[arg-type]
    with pytest.raises(pk.PlanError, match="cannot remove"):
        pk.allocate(res, 0.5, exclude=["l0", "l1"])
    with pytest.raises(pk.UnknownModuleError):
        pk.allocate(res, 0.5, exclude=["nope"])
    with pytest.raises(pk.ConfigError, match="max_ratio"):
        pk.allocate(res, 0.5, max_ratio=0.95)


def _data(model: nn.Module, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(4):
        x = torch.randn(128, 32, generator=gen)
        with torch.no_grad():
            batches.append((x, model(x)))
    return batches


def _loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum(float(F.mse_loss(model(x), y)) for x, y in batches) / len(batches)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.85])
def test_allocated_beats_uniform_on_a_model_built_to_differ(target: float) -> None:
    model = Branches(features=(32, 8))
    calib, held_out = _data(model, 1), _data(model, 2)
    res = pk.sensitivity(model, calib, F.mse_loss, progress=False)
    plan = pk.allocate(res, target)
    assert plan.predicted_loss_increase < plan.uniform_predicted_loss_increase

    allocated = copy.deepcopy(model)
    applied = pk.apply_allocation(allocated, plan)
    assert set(applied) <= set(plan)
    uniform = copy.deepcopy(model)
    pk.prune_weights(uniform, target, scope="layer")
    assert pk.sparsity(allocated) == pytest.approx(target, rel=0.01)
    assert pk.sparsity(uniform) == pytest.approx(target, rel=0.01)
    for name, ratio in plan.items():  # each layer got its own ratio
        w = dict(allocated.named_modules())[name].weight
        assert float((w == 0).float().mean()) == pytest.approx(ratio, abs=1.0 / w.numel())
    assert _loss(allocated, held_out) < 0.8 * _loss(uniform, held_out)
    assert plan["branches.0"] > plan["branches.3"]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)  # few params, many MACs
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 6 * 6, 10)  # many params, few MACs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1))


def test_macs_target_uses_per_layer_macs_and_is_hit() -> None:
    model = SmallCNN()
    data = [(torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))) for _ in range(2)]
    res = pk.sensitivity(model, data, F.cross_entropy, ratios=(0.3, 0.6, 0.9), progress=False)
    expected = {"conv1": 12 * 12 * 8 * 9, "conv2": 6 * 6 * 8 * 8 * 9, "fc": 288 * 10}  # by formula
    assert {la.name: la.macs for la in res.layers} == expected
    assert sum(expected.values()) == pk.core.metrics.count_macs(model, torch.randn(1, 1, 12, 12))
    plan = pk.allocate(res, 0.5, by="macs")
    achieved = sum(plan[n] * expected[n] for n in plan) / sum(expected.values())
    assert abs(achieved - 0.5) <= 0.005


def test_channel_plan_is_applied_as_channel_masks() -> None:
    model = SmallCNN()
    data = [(torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,)))]
    res = pk.sensitivity(
        model, data, F.cross_entropy, ratios=(0.25, 0.5, 0.75), granularity="channel", progress=False
    )
    assert [la.units for la in res.layers] == [8, 8, 10]
    plan = pk.allocate(res, 0.1, by="params", exclude=["fc"])
    for n, r in plan.items():
        assert r * res.layer(n).units == pytest.approx(round(r * res.layer(n).units))
    pk.apply_allocation(model, plan)
    for name in ("conv1", "conv2"):
        conv = getattr(model, name)
        dead = (conv.weight.flatten(1) == 0).all(1)
        assert int(dead.sum()) == round(plan[name] * 8)
        assert bool((conv.bias[dead] == 0).all())


def test_apply_allocation_validates_before_pruning() -> None:
    model = Branches(features=(32, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.UnknownModuleError, match="nope"):
        pk.apply_allocation(model, {"branches.0": 0.5, "nope": 0.5})
    with pytest.raises(pk.ConfigError):
        pk.apply_allocation(model, {"branches.0": 1.5})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    pk.apply_allocation(model, {"branches.1": 0.5})  # a plain mapping works too
    assert float((model.branches[1].weight == 0).float().mean()) == 0.5
    assert float((model.branches[0].weight == 0).float().mean()) == 0.0


def test_layer_latency_table_has_every_layer() -> None:
    model = SmallCNN()
    table = pk.layer_latency(model, torch.randn(2, 1, 12, 12), repeats=3, warmup=1)
    assert set(table) == {"conv1", "conv2", "fc"} and all(v > 0 for v in table.values())


def test_channel_plan_removes_channels_physically() -> None:
    if not hasattr(pk, "prune_channels"):
        pytest.skip("structured pruning not available")
    model = SmallCNN()
    x = torch.randn(4, 1, 12, 12)
    data = [(torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,)))]
    res = pk.sensitivity(
        model, data, F.cross_entropy, ratios=(0.25, 0.5, 0.75), granularity="channel", progress=False
    )
    plan = pk.allocate(res, 0.4, by="macs", exclude=["fc"])
    macs_before = pk.core.metrics.count_macs(model, x)
    pk.apply_allocation(model, plan, example_inputs=x, physical=True)
    assert model.conv1.out_channels == 8 - round(plan["conv1"] * 8)
    assert model.conv2.out_channels == 8 - round(plan["conv2"] * 8)
    assert model.fc.in_features == model.conv2.out_channels * 36 and model(x).shape == (4, 10)
    assert pk.core.metrics.count_macs(model, x) < macs_before


def test_allocation_from_the_one_pass_estimate_also_beats_uniform() -> None:
    model = Branches(features=(32, 8))
    calib, held_out = _data(model, 1), _data(model, 2)
    res = pk.sensitivity(model, calib, F.mse_loss, ratios=(0.3, 0.6, 0.9), progress=False)
    plan = pk.allocate(res, 0.6, source="fisher")
    assert plan.source == "fisher" and plan.achieved == pytest.approx(0.6, rel=0.01)
    allocated, uniform = copy.deepcopy(model), copy.deepcopy(model)
    pk.apply_allocation(allocated, plan)
    pk.prune_weights(uniform, 0.6, scope="layer")
    assert _loss(allocated, held_out) < _loss(uniform, held_out)
    with pytest.raises(pk.ConfigError, match="source"):
        pk.allocate(res, 0.6, source="hessian")


def test_cost_override() -> None:
    res = synthetic([1.0, 1.0], [100, 100])
    plan = pk.allocate(res, 0.3, costs={"l0": 300.0})  # l0 now costs 3x as much per ratio
    assert plan.costs == {"l0": 300.0, "l1": 100.0}
    assert (plan["l0"] * 300 + plan["l1"] * 100) / 400 == pytest.approx(0.3, rel=0.01)
    with pytest.raises(pk.ConfigError, match="costs"):
        pk.allocate(res, 0.3, costs={"nope": 1.0})
