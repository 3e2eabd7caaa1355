"""Pruner: prune-and-regrow (SET, RigL) at constant sparsity, and gradual channel pruning with removal."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests.zoo import small_cnn
from torch import nn

import prunekit as pk
from prunekit.core.masks import masked_parameters
from prunekit.training.pruner import mask_sparsity


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 10, generator=g), torch.randint(0, 4, (64,), generator=g)


def _regrow_pruner(
    method: str, opt_cls: type = torch.optim.Adam
) -> tuple[nn.Module, torch.optim.Optimizer, pk.Pruner]:
    model = _mlp()
    opt = opt_cls(model.parameters(), lr=0.01)
    cfg = pk.PrunerConfig(
        schedule=pk.ConstantSchedule(final_sparsity=0.8),
        scope="layer",
        regrowth=pk.RegrowthConfig(method=method, every=2, drop_fraction=0.5, end_step=20),  # type: ignore[arg-type]
    )
    return model, opt, pk.Pruner(model, cfg, optimizer=opt)


def _step(model: nn.Module, opt: torch.optim.Optimizer, pruner: pk.Pruner) -> None:
    x, y = _batch()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    pruner.step()


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_regrowth_keeps_sparsity_and_grown_weights_start_at_zero(method: str) -> None:
    model, opt, pruner = _regrow_pruner(method)
    _step(model, opt, pruner)  # step 0: one-shot to 80%
    counts = {mp.fqn: int(mp.mask.sum()) for mp in masked_parameters(model)}
    s0 = mask_sparsity(model)
    moved_total = 0
    for t in range(1, 12):
        before = {mp.fqn: mp.mask.clone() for mp in masked_parameters(model)}
        _step(model, opt, pruner)
        after = {mp.fqn: mp.mask.clone() for mp in masked_parameters(model)}
        assert mask_sparsity(model) == s0
        assert {k: int(v.sum()) for k, v in after.items()} == counts  # constant per layer
        if t % 2 == 0:
            for mp in masked_parameters(model):
                grown = pruner.last_regrowth[mp.fqn]
                assert torch.equal(grown, after[mp.fqn] & ~before[mp.fqn])
                moved_total += int(grown.sum())
                assert bool((mp.param[grown] == 0).all())  # regrown weights start at exactly zero
                state = opt.state[mp.param]
                assert bool((state["exp_avg"][grown] == 0).all())
                assert bool((state["exp_avg_sq"][grown] == 0).all())
        else:
            assert all(torch.equal(before[k], after[k]) for k in before)
        for mp in masked_parameters(model):  # pruned weights stay exactly zero
            assert bool((mp.param[~mp.mask] == 0).all())
    assert moved_total > 0


def test_drop_fraction_decays_with_cosine() -> None:
    rg = pk.RegrowthConfig(method="set", every=1, drop_fraction=0.3, end_step=100)
    assert rg.fraction(0) == pytest.approx(0.3)
    assert rg.fraction(50) == pytest.approx(0.15)
    assert rg.fraction(100) == pytest.approx(0.0)
    assert not rg.is_update(100)


def test_set_and_rigl_pick_different_positions() -> None:
    grown = {}
    for method in ("set", "rigl"):
        model, opt, pruner = _regrow_pruner(method, torch.optim.SGD)
        _step(model, opt, pruner)
        _step(model, opt, pruner)
        _step(model, opt, pruner)  # step 2: first regrowth
        grown[method] = {k: v.clone() for k, v in pruner.last_regrowth.items()}
    model, opt, pruner = _regrow_pruner("rigl", torch.optim.SGD)
    for _ in range(2):
        _step(model, opt, pruner)
    # oracle for RigL: with the same state, grown positions = top-|grad| among inactive
    x, y = _batch()
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    expected = {}
    for mp in masked_parameters(model):
        k = int(grown["rigl"][mp.fqn].sum())
        score = mp.param.grad.abs().masked_fill(mp.mask, -1.0).view(-1)
        e = torch.zeros(mp.mask.numel(), dtype=torch.bool)
        e[torch.topk(score, k).indices] = True
        expected[mp.fqn] = e.view_as(mp.mask)
    for fqn, e in expected.items():
        assert torch.equal(grown["rigl"][fqn], e)
    assert any(not torch.equal(grown["set"][k], grown["rigl"][k]) for k in grown["set"])


def test_rigl_without_gradients_says_how_to_fix() -> None:
    model, opt, pruner = _regrow_pruner("rigl")
    _step(model, opt, pruner)
    _step(model, opt, pruner)
    opt.zero_grad(set_to_none=True)
    with pytest.raises(pk.ConfigError, match="before optimizer.zero_grad"):
        pruner.step()


def test_regrowth_requires_optimizer() -> None:
    cfg = pk.PrunerConfig(schedule=pk.ConstantSchedule(final_sparsity=0.5), regrowth=pk.RegrowthConfig(end_step=10))
    with pytest.raises(pk.ConfigError, match="optimizer"):
        pk.Pruner(_mlp(), cfg)


def test_pruner_state_dict_round_trip() -> None:
    model, opt, pruner = _regrow_pruner("set")
    for _ in range(3):
        _step(model, opt, pruner)
    state = pruner.state_dict()
    model2 = copy.deepcopy(model)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors otherwise
    p2 = pk.Pruner(model2, pruner.config, optimizer=opt2)
    p2.load_state_dict(state)
    for _ in range(4):
        _step(model, opt, pruner)
        _step(model2, opt2, p2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_structured_gradual_follows_schedule_and_removes_channels() -> None:
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = pk.CubicSchedule(final_sparsity=0.5, start_step=1, end_step=7, frequency=2)
    cp = pk.ChannelPruner(model, schedule=sched)
    assert cp.layers == ["0", "3", "7"]
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    for t in range(9):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        target = cp.step()
        masks = cp.channel_masks()
        for name, keep in masks.items():
            c = keep.numel()
            assert int((~keep).sum()) == min(int(round(target * c)), c - 1), (t, name)
    assert cp.sparsity() == pytest.approx((4 + 6 + 8) / (8 + 12 + 16))
    params_before = sum(p.numel() for p in model.parameters())
    model.eval()
    ref = model(x)
    cp.finalize()
    out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # removal == masking
    assert [model[0].out_channels, model[3].out_channels, model[7].out_features] == [4, 6, 8]
    assert model[1].num_features == 4 and model[7].in_features == 6 * 4
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert not list(masked_parameters(model))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # rebuilt after finalize, as documented
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def test_structured_finalize_refuses_non_chain_and_leaves_model() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 2, 1))
    cp = pk.ChannelPruner(
        model, pk.ChannelPrunerConfig(schedule=pk.ConstantSchedule(final_sparsity=0.5), include=("0",))
    )
    cp.step()
    shapes = [tuple(p.shape) for p in model.parameters()]
    with pytest.raises(pk.PlanError, match="groups=8"):
        cp.finalize()
    assert [tuple(p.shape) for p in model.parameters()] == shapes
    with pytest.raises(pk.UnknownModuleError):
        pk.ChannelPruner(
            model, pk.ChannelPrunerConfig(schedule=pk.ConstantSchedule(final_sparsity=0.5), include=("9",))
        )


def test_structured_finalize_through_the_dependency_graph_for_non_chains() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise: not a plain chain
        nn.ReLU(),
        nn.Conv2d(8, 6, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    cp = pk.ChannelPruner(
        model, pk.ChannelPrunerConfig(schedule=pk.ConstantSchedule(final_sparsity=0.5), include=("0", "5"))
    )
    cp.step()
    kept = cp.channel_masks()
    w0 = model[0].weight.detach()[kept["0"]].clone()
    w5 = model[5].weight.detach()[kept["5"]][:, kept["0"]].clone()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    cp.finalize(x)
    assert [model[0].out_channels, model[3].groups, model[5].out_channels, model[9].in_features] == [
        4,
        4,
        3,
        3,
    ]
    assert torch.equal(model[0].weight.detach(), w0) and torch.equal(model[5].weight.detach(), w5)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_finalize_cuts_through_surgery_keeping_identities_and_a_reloadable_plan(tmp_path: Path) -> None:
    model = small_cnn()
    cp = pk.ChannelPruner(model, schedule=pk.ConstantSchedule(final_sparsity=0.5))
    cp.step()
    ids = [id(p) for p in model.parameters()]
    model.eval()
    x = torch.randn(4, 1, 6, 6)
    ref = model(x)
    cp.finalize()
    assert [id(p) for p in model.parameters()] == ids  # sliced in place, as prune_channels does
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert len(model._prunekit_plan) == 1
    fresh = pk.load(pk.save(model, tmp_path / "m.safetensors"), small_cnn())
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(fresh.eval()(x), model(x))
