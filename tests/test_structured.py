"""prune_channels end to end: pruned model == original with removed slices zeroed (the oracle)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, DataRequiredError, PlanError, UnknownModuleError
from prunekit.structured.surgery import apply_plan, masked_reference


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


def check_oracle(model: nn.Module, inputs: Any, atol: float = 1e-5, **kw: Any) -> pk.ChannelPruneResult:
    """Prune ``model`` and compare it with the masked original on fresh random inputs."""
    orig = copy.deepcopy(model)
    res = pk.prune_channels(model, inputs, **kw)
    ref = masked_reference(orig, model._prunekit_plan)
    x2 = torch.randn_like(inputs) if isinstance(inputs, torch.Tensor) else inputs
    with torch.no_grad():
        got = model(x2)
        want = ref(x2)
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)
    return res


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + self.sc(x))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.l1 = Basic(16, 16, 1)
        self.l2 = Basic(16, 32, 2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.l2(self.l1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseSE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.se1 = nn.Conv2d(24, 6, 1)
        self.se2 = nn.Conv2d(6, 24, 1)
        self.proj = nn.Conv2d(24, 8, 1)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.head = nn.Conv2d(16, 5, 1)  # 1x1-conv classifier: keeps its width (feeds the output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.dw(F.relu6(self.expand(x))))
        s = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = x + self.proj(y * s)
        return self.head(F.relu(self.grouped(x))).mean((2, 3))


class DenseFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(9, 4, 3, padding=1)
        self.c = nn.Conv2d(13, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, F.relu(self.a(x))], 1)
        x = torch.cat([x, F.relu(self.b(x))], 1)
        x = F.max_pool2d(F.relu(self.c(x)), 2)
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 12, 1)
        self.b = nn.Conv2d(12, 12, 1, groups=3)
        self.c = nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(F.relu(self.a(x)))
        n, c, h, w = x.shape
        x = x.view(n, 3, c // 3, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        x1, x2 = x.chunk(2, dim=1)
        return self.c(F.relu(x1) + x2)


@pytest.mark.parametrize(
    "factory,shape",
    [
        (ResNetish, (2, 3, 8, 8)),
        (DepthwiseSE, (2, 8, 6, 6)),
        (DenseFlatten, (2, 3, 8, 8)),
        (Shuffle, (2, 4, 5, 5)),
    ],
)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_cnn_oracle(factory: type[nn.Module], shape: tuple[int, ...], scope: str) -> None:
    model = _randomize_bn(factory())
    x = torch.randn(*shape)
    res = check_oracle(model, x, ratio=0.5, scope=scope)
    assert res.params_after < res.params_before
    assert any(g.after < g.before for g in res.groups)


def test_resnet_widths_and_attributes() -> None:
    model = _randomize_bn(ResNetish())
    pk.prune_channels(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    # residual stream of l1 is one group: stem, l1.c2 and l1 input share it
    assert model.stem[0].out_channels == 8 == model.l1.c1.in_channels == model.l1.b2.num_features
    assert model.l2.c1.in_channels == model.l2.sc[0].in_channels == 8
    assert model.fc.out_features == 10 and model.fc.in_features == model.l2.b2.num_features == 16
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels and m.weight.shape[1] * m.groups == m.in_channels


def test_depthwise_groups_follow_and_output_head_kept() -> None:
    model = _randomize_bn(DepthwiseSE())
    res = check_oracle(model, torch.randn(2, 8, 6, 6), ratio=0.5)
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels == 12
    assert model.se1.out_channels == 3
    assert model.head.out_channels == 5  # feeds the output: kept
    assert (
        model.expand.in_channels == 8 and model.proj.out_channels == 8
    )  # model input width / residual to input
    assert res.macs_after < res.macs_before


def test_grouped_conv_equal_counts_per_group() -> None:
    model = _randomize_bn(DepthwiseSE())
    model.proj = nn.Conv2d(24, 8, 1)
    pk.prune_channels(model, torch.randn(1, 8, 6, 6), ratio=0.5)
    g = model.grouped
    assert g.groups == 4 and g.out_channels % 4 == 0 and g.out_channels == 8


def test_ignore_and_round_to() -> None:
    model = _randomize_bn(ResNetish())
    pk.prune_channels(model, torch.randn(1, 3, 8, 8), ratio=0.6, exclude=[model.l1.c1], round_to=4)
    assert model.l1.c1.out_channels == 16
    for m in (model.stem[0], model.l2.c1, model.l2.c2):
        assert m.out_channels % 4 == 0
    model2 = _randomize_bn(ResNetish())
    pk.prune_channels(model2, torch.randn(1, 3, 8, 8), ratio=0.5, exclude="l2.*")
    assert model2.l2.c1.out_channels == 32 and model2.l2.c2.out_channels == 32


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "fpgm", "random"])
def test_criteria_oracle(criterion: str) -> None:
    check_oracle(_randomize_bn(ResNetish()), torch.randn(2, 3, 8, 8), ratio=0.3, criterion=criterion)


def test_l1_removes_smallest_filters() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 5.0, 0.1, 3.0]).view(4, 1, 1, 1).expand(4, 2, 1, 1))
        model[0].bias.zero_()
        model[2].weight.fill_(0.01)
    pk.prune_channels(model, torch.randn(1, 2, 3, 3), ratio=0.5, criterion="l1")
    assert sorted(model[0].weight[:, 0, 0, 0].tolist()) == [3.0, 5.0]


def test_taylor_needs_data_and_uses_it() -> None:
    model = _randomize_bn(ResNetish())
    with pytest.raises(DataRequiredError):
        pk.prune_channels(model, torch.randn(1, 3, 8, 8), criterion="taylor")
    before = [p.clone() for p in model.parameters()]
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))]
    check_oracle(model, torch.randn(2, 3, 8, 8), criterion="taylor", data=data, loss_fn=F.cross_entropy)
    assert all(p.grad is None for p in model.parameters())
    assert len(before) == len(list(model.parameters()))


@pytest.mark.parametrize("which", ["reduce_macs", "reduce_params"])
def test_targets_reached(which: str) -> None:
    model = _randomize_bn(ResNetish())
    x = torch.randn(1, 3, 8, 8)
    macs0, params0 = (
        pk.summary(model, x).macs,
        pk.count_params(model) if hasattr(pk, "count_params") else None,
    )
    del params0
    from prunekit.core.metrics import count_macs, count_params

    p0 = count_params(model)
    res = pk.prune_channels(model, x, **{which: 0.5})
    if which == "reduce_params":
        assert count_params(model) <= 0.5 * p0 and count_params(model) >= 0.35 * p0
        assert res.params_after == count_params(model)
    else:
        assert count_macs(model, x) <= 0.5 * macs0 * 1.02


def test_bad_input_leaves_model_untouched() -> None:
    model = _randomize_bn(ResNetish())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 8, 8)
    for kw, err in [
        ({"ratio": 1.0}, ConfigError),
        ({"ratio": -0.1}, ConfigError),
        ({"criterion": "nope"}, ConfigError),
        ({"scope": "all"}, ConfigError),
        ({"exclude": ["nothing.*"]}, UnknownModuleError),
        ({"reduce_macs": 0.5, "reduce_params": 0.5}, ConfigError),
        ({"round_to": 0}, ConfigError),
    ]:
        with pytest.raises(err):
            pk.prune_channels(model, x, **kw)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert not hasattr(model, "_prunekit_plan")


class StaleSize(nn.Module):
    """Holds a channel count outside the weights, under a name prunekit cannot know."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Linear(8 * 4, 2)
        self.zzz = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y.reshape(y.shape[0], self.zzz * 4))


def test_failure_rolls_back_exactly() -> None:
    model = StaleSize()
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match="restored"):
        pk.prune_channels(model, torch.randn(1, 3, 2, 2), ratio=0.5)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p is params[n] for n, p in model.named_parameters())
    assert model.a.out_channels == 8 and model.b.in_features == 32
    assert not hasattr(model, "_prunekit_plan")
    pk.prune_channels(model, torch.randn(1, 3, 2, 2), ratio=0.5, exclude=[model.a])  # the way out
    assert model.a.out_channels == 8


def test_plan_json_apply_plan_and_accumulation() -> None:
    torch.manual_seed(1)
    model = _randomize_bn(ResNetish())
    fresh = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    pk.prune_channels(model, x, ratio=0.25)
    pk.prune_channels(model, x, ratio=0.25, criterion="l1")
    plans = json.loads(json.dumps(model._prunekit_plan))
    assert len(plans) == 2 and all(p["version"] == 1 for p in plans)
    apply_plan(fresh, plans)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    assert len(fresh._prunekit_plan) == 2
    # oracle over two accumulated plans
    with pytest.raises(PlanError):
        apply_plan(fresh, plans)  # already applied: sizes no longer match


def test_identity_of_params_kept_and_training_works() -> None:
    model = _randomize_bn(ResNetish())
    ids = {n: id(p) for n, p in model.named_parameters()}
    pk.prune_channels(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    model.train()
    opt = torch.optim.Adam(model.parameters())
    loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.randint(0, 10, (4,)))
    loss.backward()
    opt.step()
    assert all(p.grad is None or p.grad.shape == p.shape for p in model.parameters())


def test_summary_and_result_str() -> None:
    model = _randomize_bn(ResNetish())
    x = torch.randn(1, 3, 8, 8)
    s = pk.summary(model, x)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert "stem.0" in str(s) and s.to_dict()["macs"] == s.macs > 0
    res = pk.prune_channels(model, x, ratio=0.5)
    assert "params" in str(res) and json.dumps(res.to_dict())
    s2 = pk.summary(model, x)
    assert s2.macs < s.macs and s2.params == res.params_after


def test_ratio_mapping_per_module() -> None:
    model = _randomize_bn(ResNetish())
    res = check_oracle(model, torch.randn(2, 3, 8, 8), ratio={"l1.c1": 0.5, "l2.c1": 0.25})
    assert model.l1.c1.out_channels == 8 and model.l2.c1.out_channels == 24
    assert model.stem[0].out_channels == 16 and model.l2.c2.out_channels == 32  # not in the mapping: kept
    assert sum(g.after < g.before for g in res.groups) == 2
    with pytest.raises(UnknownModuleError):
        pk.prune_channels(model, torch.randn(1, 3, 8, 8), ratio={"nope": 0.5})
    with pytest.raises(ConfigError):
        pk.prune_channels(model, torch.randn(1, 3, 8, 8), ratio={"l1.c1": 1.5})


class StoredHeads(nn.Module):
    """Attention that keeps its head count in an attribute and infers head_dim with -1.

    Without updating ``self.heads`` the pruned model still runs but computes garbage (head_dim is
    inferred): only the oracle check can tell, so this tests that the check picks the attribute update.
    """

    def __init__(self, dim: int = 8, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_stored_head_count_updated_and_checked() -> None:
    model = StoredHeads()
    orig = copy.deepcopy(model)
    x = torch.randn(2, 5, 8)
    res = pk.prune_channels(model, x, ratio=0.5)
    assert model.heads == 2 and model.qkv.out_features == 12 and model.proj.in_features == 4
    assert {"module": "", "name": "heads", "old": 4, "new": 2} in res.plan["attributes"]
    x2 = torch.randn(3, 5, 8)
    torch.testing.assert_close(
        model(x2), masked_reference(orig, model._prunekit_plan)(x2), atol=1e-5, rtol=1e-4
    )
    fresh = copy.deepcopy(orig)
    apply_plan(fresh, model._prunekit_plan)
    assert fresh.heads == 2


def test_check_false_still_catches_crash() -> None:
    model = StaleSize()
    with pytest.raises(PlanError):
        pk.prune_channels(model, torch.randn(1, 3, 2, 2), ratio=0.5, check=False)
    assert model.a.out_channels == 8


class PreNorm(nn.Module):
    """Residual stream under LayerNorm and a hand-written RMSNorm (mean over the hidden dim)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.ln = nn.LayerNorm(d)
        self.rms_w = nn.Parameter(1 + 0.1 * torch.randn(d))
        self.f1 = nn.Linear(d, 12)
        self.f2 = nn.Linear(12, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.f2(F.gelu(self.f1(self.ln(h))))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.rms_w
        return self.head(h)


def test_prune_normalized_hidden_matches_norm_aware_oracle() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from oracle import kept_from_plan
    from oracle import masked_reference as norm_aware_reference

    model = PreNorm()
    x = torch.randn(4, 5)
    kept = pk.prune_channels(copy.deepcopy(model), x, ratio=0.5)
    assert kept.groups and all("inp" not in g.name for g in kept.groups if g.after < g.before)  # hidden kept
    orig = copy.deepcopy(model)
    res = pk.prune_channels(model, x, ratio=0.5, prune_normalized=True)
    assert model.inp.out_features == 4 and model.ln.normalized_shape == (4,) and model.rms_w.shape == (4,)
    assert model.head.out_features == 3
    x2 = torch.randn(6, 5)
    ref = norm_aware_reference(orig, kept_from_plan(res.plan))
    # the hand-written RMSNorm is outside the independent oracle's norm list: model its kept-only mean here
    hidden = next(e["kept"] for e in res.plan["entries"] if e["fqn"] == "inp.weight")
    with torch.no_grad():
        h = ref.inp(x2)
        h = h + ref.f2(F.gelu(ref.f1(ref.ln(h))))
        hk = h[:, hidden]
        h = h * torch.rsqrt(hk.pow(2).mean(-1, keepdim=True) + 1e-6) * ref.rms_w
        want = ref.head(h)
    torch.testing.assert_close(model(x2), want, atol=1e-5, rtol=1e-4)


class MHABlock(nn.Module):
    def __init__(self, d: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        y = self.ln(h)
        h = h + self.attn(y, y, y, need_weights=False)[0]
        return self.fc(h.mean(1))


def test_multihead_attention_whole_heads_with_hidden() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from oracle import kept_from_plan
    from oracle import masked_reference as norm_aware_reference

    model = MHABlock().eval()
    x = torch.randn(2, 5, 4)
    res = pk.prune_channels(copy.deepcopy(model), x, ratio=0.5)  # hidden under LayerNorm: MHA kept
    assert not any("attn" in g.name for g in res.groups if g.after < g.before)
    orig = copy.deepcopy(model)
    res = pk.prune_channels(model, x, ratio=0.4, prune_normalized=True)
    a = model.attn
    assert (a.embed_dim, a.num_heads, a.head_dim) == (8, 2, 4) and a.in_proj_weight.shape == (24, 8)
    x2 = torch.randn(3, 5, 4)
    ref = norm_aware_reference(orig, kept_from_plan(res.plan)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x2), ref(x2), atol=1e-5, rtol=1e-4)


def test_pruned_model_exports_and_scripts() -> None:
    model = _randomize_bn(DepthwiseSE())
    x = torch.randn(2, 8, 6, 6)
    pk.prune_channels(model, x, ratio=0.5)
    want = model(x)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), want)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), want)


class GNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.gn = nn.GroupNorm(3, 12)
        self.b = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.silu(self.gn(self.a(x))))


def test_group_norm_kept_by_default_and_pruned_per_group_with_prune_normalized() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from oracle import kept_from_plan
    from oracle import masked_reference as norm_aware_reference

    x = torch.randn(2, 3, 5, 5)
    model = GNNet()
    pk.prune_channels(model, x, ratio=0.5)
    assert model.a.out_channels == 12
    orig = copy.deepcopy(model)
    res = pk.prune_channels(model, x, ratio=0.5, prune_normalized=True)
    assert model.a.out_channels == 6 and model.gn.num_channels == 6 and model.gn.num_groups == 3
    kept = next(e["kept"] for e in res.plan["entries"] if e["fqn"] == "a.weight")
    assert [sum(1 for k in kept if k // 4 == g) for g in range(3)] == [2, 2, 2]  # equal count per group
    x2 = torch.randn(2, 3, 5, 5)
    ref = norm_aware_reference(orig, kept_from_plan(res.plan))
    torch.testing.assert_close(model(x2), ref(x2), atol=1e-5, rtol=1e-4)


def test_check_leaves_weights_bit_identical_on_failure() -> None:
    """The check zeroes slices in place and must put every bit back when the plan is rejected."""
    from unittest import mock

    import prunekit.structured.check as structured_check

    model = _randomize_bn(ResNetish())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with (
        mock.patch.object(structured_check, "_same", return_value="forced mismatch"),
        pytest.raises(PlanError, match="forced"),
    ):
        pk.prune_channels(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.l1.c1.out_channels == 16 and not hasattr(model, "_prunekit_plan")


def test_training_goes_on_after_pruning_mid_loop_with_the_old_graph_alive() -> None:
    """``param.data = smaller`` leaves autograd's cached gradient shape behind while an old graph lives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()  # `loss` (and its graph) stays alive, as in an ordinary loop
    pk.prune_channels(model, x, ratio=0.5)
    model.zero_grad(set_to_none=True)
    new_loss = nn.functional.cross_entropy(model(x), y)
    new_loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.shape == (8, 6)
    assert loss.requires_grad  # the old graph was still alive during pruning
