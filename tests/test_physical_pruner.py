"""ChannelPruner(physical="each_step"): channels removed at every schedule update, optimizer state sliced."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.zoo import small_cnn
from torch import nn
from torch.nn import functional as F

import prunekit as pk


def _state_copy(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        n: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)}
        for n, p in model.named_parameters()
        if p in opt.state
    }


def _expected_slice(old: torch.Tensor, entries: list[dict]) -> torch.Tensor:
    """Independent reference: boolean-index each dim with the kept indices."""
    out = old
    for e in entries:
        keep = torch.zeros(e["size"], dtype=torch.bool)
        keep[e["kept"]] = True
        out = out.movedim(e["dim"], 0)[keep].movedim(0, e["dim"])
    return out


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_each_step_removes_channels_follows_schedule_and_slices_optimizer(opt_name: str) -> None:
    model = small_cnn()
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = pk.CubicSchedule(final_sparsity=0.5, start_step=1, end_step=7, frequency=2)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    cp = pk.ChannelPruner(
        model,
        pk.ChannelPrunerConfig(schedule=sched, physical="each_step"),
        example_inputs=x[:2],
        optimizer=opt,
    )
    assert cp.layers == ["0", "3", "7"]
    c0 = {"0": 8, "3": 12, "7": 16}
    ids = [id(p) for p in model.parameters()]
    physical_steps = changes = 0
    last = dict(c0)
    losses = []
    for t in range(10):
        loss = F.cross_entropy(model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = _state_copy(opt, model)
        n_plans = len(getattr(model, "_prunekit_plan", []))
        target = cp.step()
        widths = {"0": model[0].out_channels, "3": model[3].out_channels, "7": model[7].out_features}
        for name, c in c0.items():
            assert widths[name] == c - min(int(round(target * c)), c - 1), (t, name)
            assert getattr(model, name).weight.shape[0] == widths[name]
        changes += widths != last
        last = widths
        assert model[1].num_features == widths["0"] and model[7].in_features == widths["3"] * 4
        assert not list(pk.core.masks.masked_parameters(model))  # removed, not masked
        plans = getattr(model, "_prunekit_plan", [])
        if len(plans) > n_plans:  # a physical step happened: state == old state at the kept indices
            physical_steps += 1
            by_fqn: dict[str, list[dict]] = {}
            for e in plans[-1]["entries"]:
                by_fqn.setdefault(e["fqn"], []).append(e)
            params = dict(model.named_parameters())
            for name, old_state in before.items():
                for key, old in old_state.items():
                    new = opt.state[params[name]][key]
                    if old.ndim == 0:
                        assert torch.equal(new, old)
                        continue
                    want = _expected_slice(old, by_fqn.get(name, []))
                    assert new.shape == params[name].shape
                    assert torch.equal(new, want), (name, key)
    assert physical_steps == changes == 2  # updates at 1 (s=0), 3 (s=.35), 5 (s=.48: final widths), 7
    assert [id(p) for p in model.parameters()] == ids  # same optimizer, same parameter objects
    assert cp.sparsity() == pytest.approx((4 + 6 + 8) / (8 + 12 + 16))
    assert cp.finalize() is model
    # training went on with the same optimizer: it still lowers the loss on the pruned model
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) < losses[-1]


def test_resize_optimizer_is_the_old_state_at_kept_indices_and_matches_fresh_training() -> None:
    """One SGD-momentum step after resizing equals the step of a model pruned by masking the same channels."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    ref = copy.deepcopy(model)
    ref_mom = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    pk.prune_channels(model, x[:1], ratio=0.4)
    kept = torch.tensor(model._prunekit_plan[-1]["entries"][0]["kept"])
    assert len(kept) == 6
    assert pk.resize_optimizer(opt, model) == 3  # w0, b0 rows and w2 columns
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    # reference by hand: the same update rule on the kept slices of the dense model
    with torch.no_grad():
        w0, b0, w2, b2 = (p.detach().clone() for p in ref.parameters())
        m0, mb0, m2, mb2 = ref_mom
        w0, b0, m0, mb0 = w0[kept], b0[kept], m0[kept], mb0[kept]
        w2, m2 = w2[:, kept], m2[:, kept]
        small = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))
        for p, v in zip(small.parameters(), (w0, b0, w2, b2), strict=True):
            p.copy_(v)
    F.cross_entropy(small(x), y).backward()
    with torch.no_grad():
        for p, m in zip(small.parameters(), (m0, mb0, m2, mb2), strict=True):
            p.sub_(0.1 * (0.9 * m + p.grad))
    for got, want in zip(model.parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(pk.PlanError, match="twice"):
        pk.resize_optimizer(opt, model)


def test_each_step_needs_example_inputs_and_bad_config() -> None:
    model = small_cnn()
    sched = pk.ConstantSchedule(final_sparsity=0.5)
    with pytest.raises(pk.ConfigError, match="example_inputs"):
        pk.ChannelPruner(model, pk.ChannelPrunerConfig(schedule=sched, physical="each_step"))
    with pytest.raises(pk.ConfigError, match="physical"):
        pk.ChannelPrunerConfig(schedule=sched, physical="sometimes")  # type: ignore[arg-type]
    with pytest.raises(pk.PlanError, match="no structured pruning plan"):
        pk.resize_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 12)
        self.a = nn.Linear(12, 20)
        self.b = nn.Linear(20, 12)
        self.out = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.b(torch.relu(self.a(h)))  # residual: inp and b outputs are coupled
        return self.out(h)


def test_each_step_on_a_residual_model_without_optimizer_keeps_backward_working() -> None:
    torch.manual_seed(0)
    model = _Residual()
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    sched = pk.IterativeSchedule(final_sparsity=0.5, rate=0.3, every=2)
    cp = pk.ChannelPruner(
        model,
        pk.ChannelPrunerConfig(schedule=sched, include=("inp", "a"), physical="each_step"),
        example_inputs=x[:1],
    )
    loss = None
    for _t in range(6):
        loss = F.cross_entropy(model(x), y)  # the previous step's graph is still alive here
        model.zero_grad()
        loss.backward()
        target = cp.step()
        assert model.inp.out_features == 12 - round(target * 12)
        assert model.b.out_features == model.inp.out_features  # coupled through the residual add
        assert model.a.out_features == 20 - round(target * 20)
    assert loss is not None and model.a.out_features == 10
    assert model.inp.weight.grad is None or model.inp.weight.grad.shape == model.inp.weight.shape
