"""The masked-reference oracle itself: equals hand-made physical surgery, and catches a wrong one."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from oracle import masked_reference


def _keep(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


@pytest.mark.parametrize("norm", ["layer", "rms", "group"])
@given(k=st.integers(1, 16), seed=st.integers(0, 1000))
def test_mlp_with_norm_matches_surgery(norm: str, k: int, seed: int) -> None:
    torch.manual_seed(seed)
    n = 16
    if norm == "group":  # GroupNorm(4, 16) keeps equal counts per group: k per group of 4
        k = min(k, 4)
        keep = torch.cat([_keep(4, k, seed + g) + 4 * g for g in range(4)])
        nm: nn.Module = nn.GroupNorm(4, n)
    else:
        keep = _keep(n, k, seed)
        nm = nn.LayerNorm(n) if norm == "layer" else nn.RMSNorm(n)
    with torch.no_grad():
        nm.weight.uniform_(0.5, 1.5)
        if getattr(nm, "bias", None) is not None:
            nm.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Linear(8, n), nm, nn.GELU(), nn.Linear(n, 3)).eval()
    kept = {"0.weight": {0: keep.tolist()}, "0.bias": {0: keep.tolist()}, "1.weight": {0: keep.tolist()}}
    if getattr(nm, "bias", None) is not None:
        kept["1.bias"] = {0: keep.tolist()}
    kept["3.weight"] = {1: keep.tolist()}

    pruned = copy.deepcopy(model)
    fc1, norm_p, fc2 = pruned[0], pruned[1], pruned[3]
    fc1.weight, fc1.bias = nn.Parameter(fc1.weight[keep]), nn.Parameter(fc1.bias[keep])
    norm_p.weight = nn.Parameter(norm_p.weight[keep])
    if getattr(norm_p, "bias", None) is not None:
        norm_p.bias = nn.Parameter(norm_p.bias[keep])
    if isinstance(norm_p, nn.GroupNorm):
        norm_p.num_channels = len(keep)
    else:
        norm_p.normalized_shape = (len(keep),)
    fc2.weight = nn.Parameter(fc2.weight[:, keep])

    x = torch.randn(5, 8)
    ref = masked_reference(model, kept)
    torch.testing.assert_close(ref(x), pruned(x), rtol=1e-5, atol=1e-5)
    naive = copy.deepcopy(model)  # zeroing alone is wrong over a norm's dim (unless nothing removed)
    with torch.no_grad():
        drop = torch.ones(n, dtype=torch.bool)
        drop[keep] = False
        naive[0].weight[drop] = 0
        naive[0].bias[drop] = 0
    if 1 < len(keep) < n and norm != "group":
        assert not torch.allclose(naive(x), pruned(x), atol=1e-4)


def test_conv_bn_chain_matches_surgery_and_needs_bn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)
    ).eval()
    with torch.no_grad():
        model[1].bias.uniform_(0.5, 1.0)  # a BN shift leaks through zeroed filters
    keep = torch.tensor([0, 3, 4, 7])
    pruned = copy.deepcopy(model)
    c1, bn, c2 = pruned[0], pruned[1], pruned[3]
    c1.weight, c1.bias = nn.Parameter(c1.weight[keep]), nn.Parameter(c1.bias[keep])
    bn.weight, bn.bias = nn.Parameter(bn.weight[keep]), nn.Parameter(bn.bias[keep])
    bn.running_mean, bn.running_var = bn.running_mean[keep], bn.running_var[keep]
    bn.num_features = 4
    c2.weight = nn.Parameter(c2.weight[:, keep])
    x = torch.randn(2, 3, 6, 6)
    k = keep.tolist()
    full = {"0.weight": {0: k}, "0.bias": {0: k}, "1.weight": {0: k}, "1.bias": {0: k}, "3.weight": {1: k}}
    torch.testing.assert_close(masked_reference(model, full)(x), pruned(x), rtol=1e-5, atol=1e-5)
    # Forgetting BatchNorm's slices in the reference (or the surgery) is caught: the shift leaks.
    no_bn = {key: v for key, v in full.items() if not key.startswith("1.") and key != "3.weight"}
    assert not torch.allclose(masked_reference(model, no_bn)(x), pruned(x), atol=1e-3)


def test_unknown_parameter_is_an_error() -> None:
    with pytest.raises(KeyError, match="nope.weight"):
        masked_reference(nn.Linear(2, 2), {"nope.weight": {0: [0]}})
