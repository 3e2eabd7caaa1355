"""One spelling per idea: schedules take final_sparsity=, prune_channels takes fraction-removed cost goals."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.training.schedules import schedule_from_dict


@pytest.mark.parametrize(
    "cls, extra",
    [(pk.ConstantSchedule, {"at_step": 2}), (pk.IterativeSchedule, {"rate": 0.3, "every": 2})],
)
def test_schedules_old_target_spelling_warns_and_means_the_same(cls: type, extra: dict) -> None:
    new = cls(final_sparsity=0.6, **extra)
    with pytest.warns(DeprecationWarning, match=r"target=\).*final_sparsity="):
        old = cls(target=0.6, **extra)
    assert old == new
    assert [old.sparsity(t) for t in range(12)] == [new.sparsity(t) for t in range(12)]
    with pytest.warns(DeprecationWarning, match="final_sparsity"):
        assert new.target == 0.6
    with pytest.raises(pk.ConfigError, match="not both"):
        cls(target=0.6, final_sparsity=0.6, **extra)


def test_every_schedule_has_the_same_field_and_round_trips() -> None:
    scheds = [
        pk.ConstantSchedule(final_sparsity=0.5),
        pk.IterativeSchedule(final_sparsity=0.5, rate=0.2, every=3),
        pk.CubicSchedule(final_sparsity=0.5, start_step=0, end_step=10),
    ]
    for s in scheds:
        assert "final_sparsity" in {f.name for f in dataclasses.fields(s)}
        assert s.final_sparsity == 0.5 == s.end_sparsity()
        assert schedule_from_dict(s.to_dict()) == s
    with pytest.warns(DeprecationWarning):  # a dict written before the rename still loads
        assert schedule_from_dict({"kind": "constant", "target": 0.5, "at_step": 0}) == scheds[0]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_reduce_is_one_minus_target(kind: str) -> None:
    x = torch.randn(2, 6)
    a, b = _net(), _net()
    ra = pk.prune_channels(a, x, **{f"reduce_{kind}": 0.4})
    with pytest.deprecated_call(match=rf"prune_channels\(target_{kind}=\).*prune_channels\(reduce_{kind}=\)"):
        rb = pk.prune_channels(b, x, **{f"target_{kind}": 0.6})  # deprecated: the fraction kept
    assert ra.plan == rb.plan and ra.plan["entries"]
    before = ra.macs_before if kind == "macs" else ra.params_before
    after = ra.macs_after if kind == "macs" else ra.params_after
    assert after <= 0.6 * before + 1e-9  # at least 40% removed


def test_cost_goals_are_exclusive_and_validated() -> None:
    with pytest.raises(pk.ConfigError, match="at most one"):
        pk.ChannelPruneConfig(reduce_macs=0.5, reduce_params=0.5)
    with pytest.raises(pk.ConfigError, match="fraction to remove"):
        pk.ChannelPruneConfig(reduce_macs=1.0)
    with pytest.raises(pk.ConfigError, match="fraction to keep"):
        pk.ChannelPruneConfig(target_macs=0.0)  # the deprecated spelling is checked before it warns
    cfg = pk.ChannelPruneConfig(reduce_params=0.25)
    assert cfg.cost_goal() == ("params", 0.75)
    assert pk.ChannelPruneConfig.from_dict(cfg.to_dict()) == cfg
    m = _net()
    with pytest.raises(pk.ConfigError, match="reduce_macs"):
        pk.prune_channels(m, torch.randn(2, 6), reduce_macs=0.5, config=copy.deepcopy(cfg))
