"""The check's compact reference forward (kept channels only) equals the dense zeroed forward.

Oracle: every tensor of the model zeroed with ``torch.where`` at its removed slices, then a plain forward.
The keep sets are random and independent per tensor and dimension (couplings no correct plan would make:
a bias kept where its weight row is removed, a BatchNorm keeping other channels than its convolution...),
so the compact path meets non-zero constant channels, depthwise convolutions with a channel multiplier,
grouped convolutions it computes dense, and pooling / activation modules in between.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.graph.trace import record
from prunekit.structured import check, compact
from prunekit.structured.check import _own_module_uses


class _Block(nn.Module):
    """A MobileNetV2-like inverted residual block (expand, depthwise, project, residual add)."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        _Block(16, 48),
        nn.Conv2d(16, 32, 3, padding=1, groups=16), nn.BatchNorm2d(32), nn.SiLU(),  # depthwise, multiplier 2
        nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.Hardswish(),  # 8 input channels per group: dense
        nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    ).eval()  # fmt: skip
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def _random_keep(model: nn.Module, seed: int, coupled: bool) -> dict[str, dict[int, np.ndarray]]:
    """name -> dim -> bool keep. ``coupled``: one keep set per channel count (chains can stay compact)."""
    rng = np.random.default_rng(seed)
    shared: dict[int, np.ndarray] = {}

    def draw(n: int) -> np.ndarray:
        if coupled and n in shared:
            return shared[n]
        k = np.zeros(n, dtype=bool)
        k[rng.choice(n, size=max(1, n // 2), replace=False)] = True
        shared.setdefault(n, k)
        return k

    out: dict[str, dict[int, np.ndarray]] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_floating_point() or name.startswith("15."):  # the classifier: columns only
            if name == "15.weight":
                out[name] = {1: draw(t.shape[1])}
            continue
        dims = {0: draw(t.shape[0])}
        if t.dim() == 4 and t.shape[1] > 1:
            dims[1] = draw(t.shape[1])
        out[name] = dims
    return out


def _zeroed_oracle(model: nn.Module, keep: dict[str, dict[int, np.ndarray]], x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model)
    tensors = {**dict(ref.named_parameters()), **dict(ref.named_buffers())}
    with torch.no_grad():
        for name, dims in keep.items():
            t = tensors[name]
            km = torch.ones(t.shape, dtype=torch.bool)
            for d, k in dims.items():
                shape = [1] * t.dim()
                shape[d] = len(k)
                km = km & torch.from_numpy(k).view(shape)
            t.copy_(torch.where(km, t, 0))
        return ref(x)


def _compact_forward(model: nn.Module, keep: dict[str, dict[int, np.ndarray]], x: torch.Tensor
                     ) -> tuple[torch.Tensor, int]:  # fmt: skip
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    trace = record(model, x)
    by_id = {id(tensors[n]): dims for n, dims in keep.items()}
    owners = _own_module_uses(trace, {id(tensors[n]): n for n in keep})
    fast = compact.CompactForward(model, trace, by_id, owners)
    assert fast.handled == set(by_id)  # every tensor of this net is masked by a compact forward
    made = {"compact": 0}
    real_out = fast.state.out

    def out(uses, vals, idx, consts):  # type: ignore[no-untyped-def]
        made["compact"] += bool(uses and idx is not None)
        return real_out(uses, vals, idx, consts)

    fast.state.out = out  # type: ignore[method-assign]
    with torch.no_grad(), fast:
        y = model(x)
        assert not fast.state.table  # every compact tensor was read by all its consumers, then dropped
    fast.check_outputs([y])
    return y, made["compact"]


@pytest.mark.parametrize("coupled", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_forward_equals_the_dense_zeroed_forward(coupled: bool, seed: int) -> None:
    m = _net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    keep = _random_keep(m, seed, coupled)
    x = torch.randn(2, 3, 17, 15) * 3
    want = _zeroed_oracle(m, keep, x)
    got, n_compact = _compact_forward(m, keep, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert n_compact >= 4  # conv -> bn -> act chains really ran on kept channels only
    for k, v in m.state_dict().items():  # the original tensors are never written
        assert torch.equal(v, before[k]), k
    assert not any("forward" in mod.__dict__ for mod in m.modules())  # the forwards are put back


class _Branches(nn.Module):
    """One compact activation read by three convolutions (an inception-like fork), then concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Conv2d(16, 8, 1)
        self.b = nn.Conv2d(16, 8, 3, padding=1)
        self.c = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return torch.cat([self.a(h), self.b(h), self.c(h)], 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_compact_tensor_read_by_several_modules_serves_them_all(seed: int) -> None:
    """The stem's ReLU output stays compact for its three readers and is dropped after the last one."""
    torch.manual_seed(seed)
    m = _Branches().eval()
    m.stem[1].bias.data.uniform_(-0.5, 0.5)
    rng = np.random.default_rng(seed)
    rows = rng.random(16) < 0.5
    rows[0] = True
    keep = {n: {0: rows} for n in ("stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias",
                                   "stem.1.running_mean", "stem.1.running_var")}  # fmt: skip
    keep |= {"a.weight": {1: rows}, "b.weight": {1: rows}}
    x = torch.randn(2, 3, 9, 9)
    got, n_compact = _compact_forward(m, keep, x)
    torch.testing.assert_close(got, _zeroed_oracle(m, keep, x), rtol=1e-5, atol=1e-5)
    assert n_compact >= 2  # conv -> bn -> relu ran compact up to the fork


def test_non_zero_constant_channels_read_by_a_conv_run_dense() -> None:
    """A BatchNorm bias kept where its channels are removed makes constant non-zero channels; the depthwise
    conv after it reads them (zero padding makes them non-constant): it must see the full-width tensor."""
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=8)
    ).eval()
    m[1].bias.data.uniform_(1, 2)
    rows = np.array([True, False] * 4)
    keep = {"0.weight": {0: rows}, "1.weight": {0: rows}, "1.running_mean": {0: rows}, "1.running_var": {0: rows},
            "2.weight": {0: np.ones(8, dtype=bool)}}  # fmt: skip
    x = torch.randn(1, 3, 6, 6)
    got, _ = _compact_forward(m, keep, x)
    torch.testing.assert_close(got, _zeroed_oracle(m, keep, x), rtol=1e-5, atol=1e-5)


class _Flips(nn.Module):
    """Takes another path from the second call on: the conv output then reaches ``mean`` directly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.conv(x)
        return (self.bn(h) if self.calls == 1 else h).mean((2, 3))


def test_a_compact_tensor_off_the_traced_path_raises_diverged() -> None:
    m = _Flips().eval()
    x = torch.randn(1, 3, 8, 8)
    keep = {"conv.weight": {0: np.array([True, False] * 4)}}
    with pytest.raises(compact.Diverged):
        _compact_forward(m, keep, x)
    assert "forward" not in m.conv.__dict__


def test_masked_outputs_fall_back_to_the_dense_forward_when_diverged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output made compact (even the ones the trace says feed other code): the forward diverges, the
    check reruns it at full width and still proves the pruned model (oracle: masked_reference)."""
    from prunekit.structured.surgery import masked_reference

    real_out = compact._State.out
    seen = {"diverged": 0}
    real_fallback = check._masked_forward

    def always(self, uses, vals, idx, consts):  # type: ignore[no-untyped-def]
        return real_out(self, 1, vals, idx, consts)

    def counting(*a, compact: bool):  # type: ignore[no-untyped-def]
        seen["diverged"] += not compact
        return real_fallback(*a, compact=compact)

    monkeypatch.setattr(compact._State, "out", always)
    monkeypatch.setattr(check, "_masked_forward", counting)
    m = _net()
    orig = copy.deepcopy(m)
    x = torch.randn(2, 3, 16, 16)
    pk.prune_channels(m, x, ratio=0.5, exclude=[m[15]])
    assert seen["diverged"] == 1
    torch.testing.assert_close(m(x), masked_reference(orig, m._prunekit_plan)(x), rtol=1e-5, atol=1e-5)


def test_pruning_a_depthwise_net_matches_the_oracle_with_the_compact_check() -> None:
    from prunekit.structured.surgery import masked_reference

    m = _net()
    orig = copy.deepcopy(m)
    x = torch.randn(2, 3, 16, 16)
    pk.prune_channels(m, x, ratio=0.5, exclude=[m[15]])
    assert m[4].body[3].groups < 48  # the depthwise conv was pruned
    torch.testing.assert_close(m(x), masked_reference(orig, m._prunekit_plan)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["1.bias", "4.body.3.weight", "4.body.4.weight", "5.weight"])
def test_a_wrong_surgery_is_still_caught(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """The surgery keeps other channels of one tensor than the plan says: the compact reference (which
    ran: counted) differs from the pruned model, prune_channels raises and restores the model."""
    real_apply = check.apply
    ran = {"compact": 0}
    real_init = compact.CompactForward.__init__

    def init(self, *a):  # type: ignore[no-untyped-def]
        real_init(self, *a)
        ran["compact"] += len(self.forwards)

    def wrong_apply(model, plan):  # type: ignore[no-untyped-def]
        entries = tuple(
            dataclasses.replace(e, kept=tuple(sorted((k + 1) % e.size for k in e.kept)))
            if e.fqn == target and e.dim == 0 else e
            for e in plan.entries
        )  # fmt: skip
        assert entries != plan.entries
        return real_apply(model, dataclasses.replace(plan, entries=entries))

    monkeypatch.setattr(check, "apply", wrong_apply)
    monkeypatch.setattr(compact.CompactForward, "__init__", init)
    m = nn.Sequential(*list(_net())[:13]).eval()  # the feature maps are the output (no pooling dilutes)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(pk.PlanError, match="removed slices zeroed"):
        pk.prune_channels(m, x, ratio=0.5)
    assert ran["compact"] > 0
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_model_in_training_mode_gets_the_compact_check_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference runs in eval mode: BatchNorm layers of a training-mode model are replaced as well."""
    from prunekit.structured.surgery import masked_reference

    made = {"compact": 0}
    real_out = compact._State.out

    def out(self, uses, vals, idx, consts):  # type: ignore[no-untyped-def]
        made["compact"] += bool(uses and idx is not None)
        return real_out(self, uses, vals, idx, consts)

    monkeypatch.setattr(compact._State, "out", out)
    m = _net().train()
    orig = copy.deepcopy(m).eval()
    x = torch.randn(2, 3, 16, 16)
    pk.prune_channels(m, x, ratio=0.5, exclude=[m[15]])
    assert made["compact"] >= 4
    assert all(mod.training for mod in m.modules())  # the flags are restored
    torch.testing.assert_close(m.eval()(x), masked_reference(orig, m._prunekit_plan)(x), rtol=1e-5, atol=1e-5)
