"""Criteria: registry, custom criteria, and each built-in score against a hand-computed oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.core.masks import get_mask, masked_parameters
from prunekit.core.select import Target, resolve_targets
from prunekit.weights.criteria import Calibration, Snip, Taylor, Wanda, criterion_names, get_criterion


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))


def _data(batches: int = 3, n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(batches)]


def _keep_top(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    flat = torch.cat([s.flatten() for s in scores])
    k = int(sparsity * flat.numel() + 0.5)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)]


def _masks(model: nn.Module) -> list[torch.Tensor]:
    return [get_mask(t.module, "weight") for t in resolve_targets(model)[0]]


def test_unknown_criterion_lists_valid_names() -> None:
    with pytest.raises(pk.ConfigError) as e:
        get_criterion("magnitudee")
    for name in ("magnitude", "random", "taylor", "snip", "wanda"):
        assert name in str(e.value)
    assert {"l1", "magnitude", "random", "snip", "taylor", "wanda"} <= set(criterion_names())
    with pytest.raises(pk.ConfigError, match="WeightCriterion"):
        get_criterion(42)  # type: ignore[arg-type]


def test_data_requirements_are_declared() -> None:
    flags = {
        n: (get_criterion(n).requires_data, get_criterion(n).requires_loss_fn) for n in criterion_names()
    }
    assert flags["magnitude"] == flags["random"] == (False, False)
    assert flags["taylor"] == flags["snip"] == (True, True)
    assert flags["wanda"] == (True, False)


def test_custom_criterion_object_and_registered_name() -> None:
    class ByColumn(pk.WeightCriterion):
        """Prune the first input columns first: score = column index."""

        name = "by_column"

        def score(self, target: Target, rows: slice) -> torch.Tensor:
            w = target.weight[rows]
            return torch.arange(w.shape[1], dtype=torch.float32).expand(w.shape).clone()

    model = nn.Linear(4, 3)
    result = pk.prune_weights(model, 0.5, criterion=ByColumn(), chunk_elements=4)
    assert result.criterion == "by_column"
    assert get_mask(model, "weight").tolist() == [[False, False, True, True]] * 3
    pk.register_criterion("by_column_test", ByColumn)
    other = nn.Linear(4, 3)
    pk.prune_weights(other, 0.25, criterion="by_column_test")
    assert get_mask(other, "weight")[:, 0].tolist() == [False] * 3


def test_criterion_with_wrong_shape_or_nan_is_rejected_without_changes() -> None:
    class Bad(pk.WeightCriterion):
        def __init__(self, value: torch.Tensor) -> None:
            self.value = value

        def score(self, target: Target, rows: slice) -> torch.Tensor:
            return self.value

    model = nn.Linear(4, 3)
    before = model.weight.clone()
    for bad in (torch.zeros(2), torch.full((3, 4), float("nan"))):
        with pytest.raises(pk.ConfigError, match="'weight'"):
            pk.prune_weights(model, 0.5, criterion=Bad(bad))
    assert torch.equal(model.weight, before) and not list(masked_parameters(model))


def test_random_is_seeded_and_spread_over_layers() -> None:
    def mask(seed: int, chunk: int) -> list[torch.Tensor]:
        torch.manual_seed(123)
        model = _model()
        pk.prune_weights(model, 0.5, criterion=pk.weights.criteria.RandomScore(seed=seed), chunk_elements=chunk)
        return _masks(model)

    same = [torch.equal(a, b) for a, b in zip(mask(0, 1 << 20), mask(0, 1 << 20), strict=True)]
    assert all(same)
    assert not all(torch.equal(a, b) for a, b in zip(mask(0, 1 << 20), mask(1, 1 << 20), strict=True))
    # pruned fraction per layer follows the size, roughly (global random is uniform)
    m = mask(3, 5)
    frac = [float((~x).float().mean()) for x in m]
    assert all(0.3 < f < 0.7 for f in frac)


def _oracle_grads(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    ref = _model()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    return [ref[0].weight.grad.clone(), ref[2].weight.grad.clone()]


@pytest.mark.parametrize("name", ["taylor", "snip"])
def test_gradient_criteria_match_hand_computed_scores_and_leave_no_trace(name: str) -> None:
    model = _model()
    data = _data()
    grads = _oracle_grads(model, data)
    expected = _keep_top(
        [(g * w).abs() for g, w in zip(grads, [model[0].weight, model[2].weight], strict=True)], 0.6
    )
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # the user's own pending gradient
    pk.prune_weights(model, 0.6, criterion=name, data=data, loss_fn=F.cross_entropy, chunk_elements=10)
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), expected, strict=True))
    assert model.training
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[2].weight.grad is None and all(p.requires_grad for p in model.parameters())


def test_snip_scores_are_normalised() -> None:
    model = _model()
    crit = Snip()
    targets = resolve_targets(model)[0]
    crit.prepare(model, targets, Calibration(data=_data(), loss_fn=F.cross_entropy))
    total = sum(float(crit.score(t, slice(None)).sum()) for t in targets)
    assert total == pytest.approx(1.0, rel=1e-5)
    crit.release()
    with pytest.raises(pk.ConfigError, match="prepare"):
        crit.score(targets[0], slice(None))


def test_wanda_matches_hand_computed_activation_norms() -> None:
    model = _model()
    data = _data(batches=2)
    x = torch.cat([b[0] for b in data])
    h = model[1](model[0](x)).detach()
    expected = _keep_top([model[0].weight.abs() * x.norm(dim=0), model[2].weight.abs() * h.norm(dim=0)], 0.5)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=5)  # a DataLoader works as data
    pk.prune_weights(model, 0.5, criterion="wanda", data=loader, scope="global")
    assert all(torch.equal(a, b) for a, b in zip(_masks(model), expected, strict=True))


def test_wanda_grouped_conv_uses_its_own_group_channels() -> None:
    conv = nn.Conv2d(4, 6, 1, groups=2, bias=False)
    x = torch.randn(3, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    crit = Wanda()
    target = Target("", conv)
    crit.prepare(conv, [target], Calibration(data=[(x, None)]))
    norms = x.transpose(0, 1).reshape(4, -1).norm(dim=1)  # per input channel
    w = conv.weight.detach().abs()[..., 0, 0]  # (6, 2)
    expected = torch.cat([w[:3] * norms[:2], w[3:] * norms[2:]])
    assert torch.allclose(crit.score(target, slice(None))[..., 0, 0], expected, rtol=1e-5)
    assert torch.allclose(crit.score(target, slice(3, 6))[..., 0, 0], expected[3:], rtol=1e-5)


def test_max_batches_bounds_the_data_used() -> None:
    seen = []

    def stream():
        for i, batch in enumerate(_data(batches=10)):
            seen.append(i)
            yield batch

    pk.prune_weights(_model(), 0.5, criterion="wanda", data=stream(), max_batches=2)
    assert seen == [0, 1]


def test_taylor_does_not_update_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    data = [(torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 0, 1]))]
    pk.prune_weights(model, 0.5, criterion=Taylor(), data=data, loss_fn=F.cross_entropy)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(criterion="wanda"), "data="),
        (dict(criterion="taylor"), "loss_fn="),
        (dict(criterion="snip", data=_data()), "loss_fn="),
        (dict(criterion="wanda", data=[]), "no batches"),
        (dict(criterion="taylor", data=[torch.randn(2, 6)], loss_fn=F.cross_entropy), "pair"),
    ],
)
def test_missing_or_malformed_data_is_a_clear_error_and_model_untouched(kwargs, needle) -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.DataRequiredError, match=needle):
        pk.prune_weights(model, 0.5, **kwargs)
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
