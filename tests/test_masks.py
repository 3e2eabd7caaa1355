"""Masks: a bool buffer, no weight copy, in force through training, serialization and compilation."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from prunekit.core.masks import get_mask, make_permanent, masked_parameters, refresh, set_mask


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 4) -> None:
    x = torch.randn(6, 8)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
}


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_pruned_weights_stay_zero_through_training_with_warm_optimizer_state(make_opt) -> None:
    model = _model()
    opt = make_opt(model.parameters())
    _train(model, opt)  # momentum / moments are non-zero for every weight now
    mask = torch.rand(16, 8) > 0.5
    set_mask(model[0], "weight", mask)
    _train(model, opt, steps=6)
    assert torch.count_nonzero(model[0].weight[~mask]) == 0
    assert torch.count_nonzero(model[0].weight[mask]) == int(mask.sum())


def test_identity_kept_and_no_weight_copy() -> None:
    model = _model()
    before = id(model[0].weight)
    set_mask(model[0], "weight", torch.rand(16, 8) > 0.3)
    assert id(model[0].weight) == before
    assert not any("orig" in k for k in model.state_dict())
    assert model[0].weight_mask.dtype == torch.bool


def test_masking_twice_is_cumulative() -> None:
    layer = nn.Linear(8, 8)
    a, b = torch.rand(8, 8) > 0.5, torch.rand(8, 8) > 0.5
    set_mask(layer, "weight", a)
    set_mask(layer, "weight", b)
    assert torch.equal(get_mask(layer, "weight"), a & b)


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
def test_masks_survive_copies_and_keep_working(clone) -> None:
    model = _model()
    mask = torch.rand(16, 8) > 0.5
    set_mask(model[0], "weight", mask)
    other = clone(model)
    assert [mp.fqn for mp in masked_parameters(other)] == ["0.weight"]
    _train(other, torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9))
    assert torch.count_nonzero(other[0].weight[~mask]) == 0


def test_state_dict_round_trip_into_fresh_masked_model_reapplies_mask() -> None:
    src, dst = _model(), _model()
    set_mask(src[0], "weight", torch.rand(16, 8) > 0.5)
    set_mask(dst[0], "weight", torch.ones(16, 8, dtype=torch.bool))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst[0].weight_mask, src[0].weight_mask)
    assert torch.equal(dst[0].weight, src[0].weight)


def test_loading_dense_weights_into_masked_model_keeps_zeros() -> None:
    dense, masked = _model(), _model()
    mask = torch.rand(16, 8) > 0.5
    set_mask(masked[0], "weight", mask)
    state = dense.state_dict()
    state["0.weight_mask"] = mask
    masked.load_state_dict(state)
    assert torch.count_nonzero(masked[0].weight[~mask]) == 0


def test_jit_trace_and_compile_give_the_same_output() -> None:
    model = _model().eval()
    set_mask(model[0], "weight", torch.rand(16, 8) > 0.5)
    x = torch.randn(3, 8)
    expected = model(x)
    torch.testing.assert_close(torch.jit.trace(model, x)(x), expected)
    torch.testing.assert_close(torch.compile(model)(x), expected)


def test_make_permanent_leaves_a_clean_model() -> None:
    model = _model()
    mask = torch.rand(16, 8) > 0.5
    set_mask(model[0], "weight", mask)
    assert make_permanent(model) == 1
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert not model[0]._forward_pre_hooks and not list(masked_parameters(model))
    assert torch.count_nonzero(model[0].weight[~mask]) == 0
    pickle.loads(pickle.dumps(model))


def test_refresh_reapplies_after_manual_edit() -> None:
    layer = nn.Linear(4, 4)
    mask = torch.eye(4, dtype=torch.bool)
    set_mask(layer, "weight", mask)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    refresh(layer)
    assert torch.equal(layer.weight, mask.float())


def test_wrong_mask_shape_is_refused_and_model_untouched() -> None:
    layer = nn.Linear(4, 4)
    before = layer.weight.detach().clone()
    with pytest.raises(ValueError, match=r"expected the parameter's shape \(4, 4\)"):
        set_mask(layer, "weight", torch.ones(3, 4, dtype=torch.bool))
    assert torch.equal(layer.weight, before) and get_mask(layer, "weight") is None
