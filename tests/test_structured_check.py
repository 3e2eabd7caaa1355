"""The verification check of prune_channels: masked-original forward with lazily / eagerly swapped tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.graph.trace import record
from prunekit.structured.check import _own_module_uses
from prunekit.structured.surgery import masked_reference


class ParentReads(nn.Module):
    """``b`` runs twice and its weight is also read by the parent (so it cannot be swapped lazily)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.b = nn.Linear(32, 32)
        self.c = nn.Linear(32, 24)
        self.d = nn.Linear(24, 4)
        self.scale = nn.Parameter(torch.rand(24) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h)) + F.linear(h, self.b.weight, self.b.bias)
        h = self.b(h)
        return self.d(torch.relu(self.c(h)) * self.scale)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ParentReads().eval()


def test_own_module_uses_classifies_tensors() -> None:
    m = _model()
    trace = record(m, torch.randn(3, 8))
    names = ["a.weight", "a.bias", "b.weight", "b.bias", "c.weight", "scale"]
    tensors = dict(m.named_parameters())
    got = _own_module_uses(trace, {id(tensors[n]): n for n in names})
    by_name = {n: got[id(tensors[n])] for n in names}
    assert by_name["a.weight"] == "a" and by_name["a.bias"] == "a" and by_name["c.weight"] == "c"
    assert by_name["b.weight"] is None and by_name["b.bias"] is None  # parent reads them too
    assert by_name["scale"] == ""  # the root's own parameter, used in the root's forward


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_check_matches_oracle_with_mixed_swaps(ratio: float) -> None:
    m = _model()
    orig = copy.deepcopy(m)
    x = torch.randn(5, 8)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    refs = m.state_dict()  # the original tensors: the check must never write them
    res = pk.prune_channels(m, x, ratio=ratio, exclude=[m.d])
    assert res.params_after < res.params_before
    assert m.a.out_features < 32 and m.c.out_features < 24
    ref = masked_reference(orig, m._prunekit_plan)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    for k, v in refs.items():
        assert torch.equal(v, before[k]), k


def test_check_restores_bit_identical_after_mismatch() -> None:
    class Liar(nn.Module):
        """Reads a stored width at run time, so pruning ``a`` changes what it computes (check must fail)."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 16)
            self.b = nn.Linear(16, 3)
            self.n = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h) + h.shape[-1] / self.n

    torch.manual_seed(0)
    m = Liar().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 6)
    out = m(x)
    with pytest.raises(pk.PlanError, match="removed slices zeroed"):
        pk.prune_channels(m, x, ratio=0.5)
    assert m.a.out_features == 16 and m.a.weight.shape == (16, 6)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(m(x), out)
