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


def _keep(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=g)[:k]] = True
    return keep


@pytest.mark.parametrize("op", ["linear", "conv2d"])
@pytest.mark.parametrize(
    "rows_cols_bias", [(True, True, True), (True, False, False), (False, True, True), (True, True, None)]
)
def test_skip_zero_slices_equals_the_dense_masked_call(
    op: str, rows_cols_bias: tuple[bool, bool, bool | None]
) -> None:
    """Oracle: computing only kept rows/columns equals the dense call on the zeroed weight, for any input
    and any keep sets (also ones no correct plan would make: the bias kept where its row is removed)."""
    import numpy as np

    from prunekit.structured.check import _SkipZeroSlices

    prune_rows, prune_cols, bias = rows_cols_bias
    torch.manual_seed(0)
    out_f, in_f = 48, (300 if op == "linear" else 40)  # >= min_macs (256) products per output
    w = torch.randn(out_f, in_f) if op == "linear" else torch.randn(out_f, in_f, 3, 3)
    x = torch.randn(2, 7, in_f) if op == "linear" else torch.randn(2, in_f, 9, 9)
    rows = _keep(out_f, 20, 1) if prune_rows else torch.ones(out_f, dtype=torch.bool)
    cols = _keep(in_f, 13, 2) if prune_cols else torch.ones(in_f, dtype=torch.bool)
    shape = (-1, 1) if op == "linear" else (-1, 1, 1, 1)
    wm = torch.where(rows.view(shape) & cols.view(1, -1, *shape[2:]), w, 0)
    b = None if bias is None else torch.randn(out_f)
    bm = None if b is None else torch.where(_keep(out_f, 30, 3), b, 0)  # not the rows' keep set
    dims = {0: rows.numpy(), 1: cols.numpy()}
    mode = _SkipZeroSlices({id(wm): wm}, {id(wm): {d: np.asarray(v) for d, v in dims.items()}})
    call = (lambda: F.linear(x, wm, bm)) if op == "linear" else (lambda: F.conv2d(x, wm, bm, 1, 1, 1, 1))
    want = call()
    counted = {"sliced": 0}
    real = _SkipZeroSlices._linear if op == "linear" else _SkipZeroSlices._conv2d

    def spy(*a):  # type: ignore[no-untyped-def]
        counted["sliced"] += 1
        return real(*a)

    setattr(mode, "_" + op, spy)
    with mode:
        got = call()
    assert counted["sliced"] == 1  # the sliced path ran (the test would pass vacuously otherwise)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _WideLiar(nn.Module):
    """Reads a stored width at run time (the check must fail) with layers wide enough to be sliced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 64, 3, padding=1)
        self.a = nn.Linear(64, 512)
        self.b = nn.Linear(512, 3)
        self.n = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(self.conv(x).mean((2, 3)))
        return self.b(h) + h.shape[-1] / self.n


def _count_sliced_calls(monkeypatch: pytest.MonkeyPatch, kernel: str) -> dict[str, int]:
    """Count the check's sliced ``kernel`` calls (``"_linear"`` / ``"_conv2d"``); they still run.

    Both ways the reference slices count: the mode's kernels (:class:`_SkipZeroSlices`) and the compact
    module forwards (:mod:`prunekit.structured.compact`) when they multiply fewer rows/columns.
    """
    from prunekit.structured import check, compact

    calls = {kernel: 0}
    real = getattr(check._SkipZeroSlices, kernel)

    def spy(*a):  # type: ignore[no-untyped-def]
        calls[kernel] += 1
        return real(*a)

    monkeypatch.setattr(check._SkipZeroSlices, kernel, staticmethod(spy))
    plan = compact._LinearPlan if kernel == "_linear" else compact._ConvPlan
    real_call = plan.__call__

    def spy_call(self, *a):  # type: ignore[no-untyped-def]
        out = real_call(self, *a)
        sliced = (
            (self.rows is not None or self.cols is not None) if kernel == "_linear" else out[1] is not None
        )
        calls[kernel] += sliced
        return out

    monkeypatch.setattr(plan, "__call__", spy_call)
    return calls


def test_check_still_catches_a_mismatch_when_slicing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_sliced_calls(monkeypatch, "_linear")
    torch.manual_seed(0)
    m = _WideLiar().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(pk.PlanError, match="removed slices zeroed"):
        pk.prune_channels(m, torch.randn(2, 16, 6, 6), ratio=0.5)
    assert calls["_linear"] > 0
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_sliced_check_matches_oracle_on_a_conv_net(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_sliced_calls(monkeypatch, "_conv2d")
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()  # fmt: skip
    for bn in (m[1], m[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    orig = copy.deepcopy(m)
    x = torch.randn(2, 3, 12, 12)
    pk.prune_channels(m, x, ratio=0.5, exclude=[m[10]])
    assert calls["_conv2d"] >= 2  # conv 2 and 3 were sliced in the check (conv 1: 27 MACs per output, dense)
    torch.testing.assert_close(m(x), masked_reference(orig, m._prunekit_plan)(x), rtol=1e-5, atol=1e-5)


class _Unbatched(nn.Module):
    """conv2 runs on a 3-D (unbatched) input: its unzeroed weight must reach it zeroed (fallback path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.stack([torch.relu(self.conv2(h[i])) for i in range(h.shape[0])])
        return self.fc(h.mean((2, 3)))


def test_deferred_weights_are_zeroed_for_calls_that_are_not_sliced(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.structured import check

    seen: dict[str, int] = {"deferred": 0, "zeroed": 0}
    real_defer, real_zeroed = check._SkipZeroSlices.defer, check._SkipZeroSlices._zeroed

    def defer(self, *a):  # type: ignore[no-untyped-def]
        real_defer(self, *a)
        seen["deferred"] += len(self.deferred)

    def zeroed(self, t):  # type: ignore[no-untyped-def]
        out = real_zeroed(self, t)
        seen["zeroed"] += out is not t
        return out

    monkeypatch.setattr(check._SkipZeroSlices, "defer", defer)
    monkeypatch.setattr(check._SkipZeroSlices, "_zeroed", zeroed)
    torch.manual_seed(0)
    m = _Unbatched().eval()
    orig = copy.deepcopy(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    refs = m.state_dict()
    x = torch.randn(2, 3, 8, 8)
    pk.prune_channels(m, x, ratio=0.5, exclude=[m.fc])
    assert seen["deferred"] >= 1 and seen["zeroed"] >= 1  # conv2's weight was deferred, then zeroed
    torch.testing.assert_close(m(x), masked_reference(orig, m._prunekit_plan)(x), rtol=1e-5, atol=1e-5)
    for k, v in refs.items():
        assert torch.equal(v, before[k]), k


def test_a_deferred_weight_reaches_unsliced_calls_zeroed() -> None:
    """Oracle for the fallback: an unbatched conv and any other op get the zeroed copy, never the original."""
    import numpy as np

    from prunekit.structured.check import _SkipZeroSlices

    torch.manual_seed(0)
    conv = nn.Conv2d(32, 24, 3, padding=1).eval()
    w = conv.weight
    rows, cols = _keep(24, 10, 4), _keep(32, 13, 5)
    km = rows.view(-1, 1, 1, 1) & cols.view(1, -1, 1, 1)
    wz = torch.where(km, w.detach(), 0)
    mode = _SkipZeroSlices({id(w): w}, {id(w): {0: rows.numpy(), 1: cols.numpy()}}, {id(w): km})
    mode.defer({"": [id(w)]}, {"": conv})
    assert mode.deferred == {id(w)}
    x3 = torch.randn(32, 6, 6)  # unbatched: not sliced
    with torch.no_grad():
        want_conv = F.conv2d(x3, wz, None, 1, 1)
        want_sum = wz.sum()
        with mode:
            got_conv = F.conv2d(x3, w, None, 1, 1)
            got_sum = torch.sum(w)
    torch.testing.assert_close(got_conv, want_conv)
    torch.testing.assert_close(got_sum, want_sum)
    assert not np.allclose(float(w.detach().sum()), float(want_sum))  # the original was not zeroed
