"""prune_structured_oneshot: compensation against hand references, exact refit, physical == masked, budgets, I/O."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, PlanError, PrunekitError


class Block(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    """Two residual MLP blocks (the smallest model with calibration-compatible blocks)."""

    def __init__(self, d: int = 6, h: int = 10, n: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(d, h) for _ in range(n))
        with torch.no_grad():
            for b in self.blocks:
                b.up.bias.add_(0.5)  # activations with a clear mean, so compensation matters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def _data(d: int = 6, n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 5, d, generator=g) for _ in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(
        now[k].shape == state[k].shape and torch.equal(now[k], state[k]) for k in state
    )


def _reference(
    model: Net, data: list[torch.Tensor], remove: int, method: str
) -> list[tuple[torch.Tensor, ...]]:
    """Independent block loop in plain torch: (kept rows, W_up, b_up, W_down, b_down) per block."""
    model = copy.deepcopy(model)
    xs = [x.reshape(-1, x.shape[-1]) for x in data]
    out = []
    for blk in model.blocks:
        a = torch.cat([torch.relu(blk.up(x)) for x in xs]).detach()  # (N, h)
        w, b = blk.down.weight.detach(), blk.down.bias.detach()
        score = w.norm(dim=0) * a.norm(dim=0)
        drop = torch.argsort(score, stable=True)[:remove]
        keep = torch.tensor([j for j in range(w.shape[1]) if j not in set(drop.tolist())])
        if method == "bias":
            new_b = b + w[:, drop] @ a[:, drop].mean(0)
            new_w = w[:, keep]
        else:  # refit: least squares of [a_K, 1] onto the dense outputs
            x_aug = torch.cat([a[:, keep], torch.ones(a.shape[0], 1)], 1).double()
            y = (a @ w.T + b).double()
            sol = torch.linalg.lstsq(x_aug, y, driver="gelsd").solution.T.float()
            new_w, new_b = sol[:, :-1], sol[:, -1]
        up_w, up_b = blk.up.weight.detach()[keep], blk.up.bias.detach()[keep]
        out.append((keep, up_w, up_b, new_w, new_b))
        with torch.no_grad():  # the pruned block propagates to the next one
            blk.up.weight.data, blk.up.bias.data = up_w.clone(), up_b.clone()
            blk.down.weight.data, blk.down.bias.data = new_w.clone(), new_b.clone()
        xs = [blk(x).detach() for x in xs]
    return out


@pytest.mark.parametrize("method", ["bias", "refit"])
def test_compensation_matches_hand_reference(method: str) -> None:
    model, data = Net(), _data()
    ref = _reference(model, data, remove=4, method=method)
    res = pk.prune_structured_oneshot(model, data, ratio=0.4, what=("mlp",), method=method, dampening=0.0)
    assert [(g.before, g.after) for g in res.groups] == [(10, 6), (10, 6)]
    for blk, (_keep, up_w, up_b, down_w, down_b) in zip(model.blocks, ref, strict=True):
        torch.testing.assert_close(blk.up.weight, up_w)
        torch.testing.assert_close(blk.up.bias, up_b)
        torch.testing.assert_close(blk.down.weight, down_w, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(blk.down.bias, down_b, atol=2e-4, rtol=1e-4)


def test_refit_is_the_least_squares_optimum_and_beats_bias() -> None:
    from prunekit.oneshot.compensate import bias_compensation, refit_columns
    from prunekit.oneshot.engine import LayerStats

    g = torch.Generator().manual_seed(3)
    a = (
        torch.randn(200, 12, generator=g) @ torch.randn(12, 12, generator=g) + 0.7
    )  # correlated, non-zero mean
    w, b = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    st = LayerStats(a.T @ a, a.sum(0), a.shape[0])
    keep = torch.ones(12, dtype=torch.bool)
    keep[[1, 4, 7, 8]] = False
    new_w, new_b = refit_columns(w, b, st, keep, dampening=0.0)
    assert new_b is not None and bool((new_w[:, ~keep] == 0).all())
    x = torch.cat([a[:, keep], torch.ones(200, 1)], 1).double()
    sol = torch.linalg.lstsq(x, (a @ w.T + b).double(), driver="gelsd").solution.T.float()
    torch.testing.assert_close(new_w[:, keep], sol[:, :-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(new_b, sol[:, -1], atol=1e-4, rtol=1e-4)
    y = a @ w.T + b
    err_refit = (a @ new_w.T + new_b - y).square().sum()
    bias_b = b + bias_compensation(w, st, ~keep)
    err_bias = (a[:, keep] @ w[:, keep].T + bias_b - y).square().sum()
    err_none = (a[:, keep] @ w[:, keep].T + b - y).square().sum()
    assert err_refit < err_bias < err_none


def _bert(hidden: int = 32, inter: int = 64, heads: int = 4, layers: int = 2) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=96,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _llama(inter: int = 96) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=inter,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attn_implementation="eager",
    )
    return transformers.LlamaModel(cfg).eval()


def _tokens(n: int = 3, b: int = 4, t: int = 10, seed: int = 5) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 96, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t - 3 :] = 0  # padding is left out of the statistics
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _run(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model(**batch).last_hidden_state
    return out


@pytest.mark.parametrize("make", [_bert, _llama])
def test_physical_equals_masked_compensated_reference(make: Any) -> None:
    """The pruned model == the original with the compensated consumers and the removed columns zeroed."""
    model = make()
    original = copy.deepcopy(model)
    data = _tokens()
    res = pk.prune_structured_oneshot(model, data, ratio=0.5, method="refit")
    assert {g.kind for g in res.groups} == {"mlp", "heads"}
    consumers = {e["fqn"]: e["kept"] for e in res.plan["entries"] if e["dim"] == 1}
    pruned = dict(model.named_parameters())
    masked = copy.deepcopy(original)
    with torch.no_grad():
        for name, p in masked.named_parameters():
            if name in consumers:
                kept = torch.tensor(consumers[name])
                p.zero_()
                p[:, kept] = pruned[name]
                bias = name[: -len("weight")] + "bias"
                if bias in pruned:
                    dict(masked.named_parameters())[bias].copy_(pruned[bias])
    for batch in data[:2]:
        pad = batch["attention_mask"].bool()
        torch.testing.assert_close(_run(model, batch)[pad], _run(masked, batch)[pad], atol=1e-4, rtol=1e-4)
    assert res.block_params_after < res.block_params_before


def test_refit_is_closer_to_dense_than_bias_and_none() -> None:
    model = _bert(hidden=32, inter=128)
    data = _tokens(n=4, b=8)
    dense = [_run(model, b) for b in data]
    errs = {}
    for method in ("none", "bias", "refit"):
        m = copy.deepcopy(model)
        pk.prune_structured_oneshot(m, data, ratio=0.5, what=("mlp",), method=method)
        errs[method] = sum(float((_run(m, b) - d).square().mean()) for b, d in zip(data, dense, strict=True))
    assert errs["refit"] < errs["bias"] < errs["none"]


@pytest.mark.parametrize(
    ("make", "budget", "round_to"), [(_bert, 0.3, 8), (_llama, 0.25, None), (_bert, 0.2, None)]
)
def test_budget_is_met_within_one_percent(make: Any, budget: float, round_to: int | None) -> None:
    # big enough that one unit (a KV group, 8 MLP channels) is below 1% of the target
    model = make(inter=384) if make is _llama else make(hidden=64, inter=512, layers=3)
    before = (
        sum(p.numel() for p in model.layers.parameters())
        if make is _llama
        else sum(p.numel() for p in model.encoder.layer.parameters())
    )
    res = pk.prune_structured_oneshot(model, _tokens(), budget=budget, round_to=round_to, method="bias")
    assert res.block_params_before == before
    assert abs(res.removed_fraction - budget) <= 0.01 * budget, res.removed_fraction
    kinds = {g.kind for g in res.groups if g.after < g.before}
    if make is _bert:
        assert kinds == {"mlp", "heads"}  # one budget shared between width and heads
    for g in res.groups:
        if g.kind == "mlp" and round_to:
            assert g.after % round_to == 0


def test_impossible_budget_and_bad_input_leave_the_model_unchanged() -> None:
    model = _bert()
    state = _state(model)
    with pytest.raises(PlanError, match="cannot remove"):
        pk.prune_structured_oneshot(model, _tokens(), budget=0.6, what=("heads",))
    assert _same_state(model, state)
    with pytest.raises(ConfigError):
        pk.prune_structured_oneshot(model, _tokens(), ratio=1.0)
    with pytest.raises(ConfigError):
        pk.prune_structured_oneshot(model, _tokens(), ratio=0.2, what=("layers",))
    with pytest.raises(PrunekitError, match="does not fit"):
        pk.prune_structured_oneshot(
            model, [{"input_ids": torch.full((2, 5), 500)}]
        )  # ids beyond the vocabulary
    with pytest.raises(PrunekitError):
        pk.prune_structured_oneshot(model, [])
    assert _same_state(model, state)
    net = Net()
    net_state = _state(net)
    with pytest.raises(PrunekitError, match="does not fit"):
        pk.prune_structured_oneshot(net, [torch.randn(2, 7)])  # wrong feature size
    with pytest.raises(ConfigError, match="nothing calibration-compatible"):
        pk.prune_structured_oneshot(net, _data(), what=("heads",))
    with pytest.raises(ConfigError, match="no transformer blocks"):
        pk.prune_structured_oneshot(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), _data())
    assert _same_state(net, net_state)


def test_failure_after_compensation_restores_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunekit.oneshot.structured as mod

    model = _bert()
    state = _state(model)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise PlanError("surgery failed")

    monkeypatch.setattr(mod, "prune_channels", boom)
    with pytest.raises(PlanError, match="surgery failed"):
        pk.prune_structured_oneshot(model, _tokens(), ratio=0.5, method="refit")
    assert _same_state(model, state)


def test_uniform_widths_round_trip_through_save_pretrained(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    for make, what, cls in (
        (_bert, ("mlp",), transformers.BertModel),
        (_llama, ("mlp", "heads"), transformers.LlamaModel),
    ):
        model = make()
        data = _tokens()
        res = pk.prune_structured_oneshot(model, data, ratio=0.5, what=what)
        assert res.hf_config_synced is True
        out = tmp_path / cls.__name__
        pk.save_pretrained(model, out)
        back = cls.from_pretrained(str(out)).eval()
        torch.testing.assert_close(_run(back, data[0]), _run(model, data[0]))


def test_per_layer_widths_round_trip_through_pk_save(tmp_path: Any) -> None:
    for make in (_bert, _llama):
        model = make()
        data = _tokens()
        res = pk.prune_structured_oneshot(model, data, budget=0.3, method="refit")
        widths = {(g.kind, g.after) for g in res.groups}
        assert len(widths) > 2 or res.hf_config_synced is False  # per-layer widths: config cannot say them
        path = pk.save(model, tmp_path / "m.safetensors")
        back = pk.load(path, make())
        torch.testing.assert_close(_run(back, data[0]), _run(model, data[0]))


def test_config_round_trip_and_validation() -> None:
    cfg = pk.StructuredOneShotConfig(ratio={"mlp": 0.5}, what=["mlp"], method="bias", round_to=8)
    assert cfg.what == ("mlp",)
    assert pk.StructuredOneShotConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        {"ratio": -0.1},
        {"ratio": {"mlp": 1.0}},
        {"method": "obs"},
        {"budget": 1.5},
        {"round_to": 0},
        {"criterion": "taylor"},
        {"ratio": {"experts": 0.1}},
    ):
        with pytest.raises(ConfigError):
            pk.StructuredOneShotConfig(**bad)
    model = Net()
    with pytest.raises(ConfigError, match="both"):
        pk.prune_structured_oneshot(model, _data(), ratio=0.5, config=cfg)
