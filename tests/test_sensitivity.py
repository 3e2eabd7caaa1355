"""Sensitivity analysis: the model is left bit-identical, the curves are right, the estimates rank layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import prunekit as pk
from prunekit.analysis.sweep import keep_mask, spearman
from prunekit.core.masks import get_mask, set_mask
from zoo import Branches


def accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small MLP trained on sklearn's digits, and 4 validation batches."""
    torch.manual_seed(0)
    from prunekit.core.datasets import digits

    split = digits()
    x_train, y_train = split.x_train.flatten(1), split.y_train
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is much faster on a loaded machine
    try:
        for _ in range(150):
            idx = torch.randint(0, len(x_train), (128,))
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    x_val, y_val = split.x_test.flatten(1), split.y_test
    batches = [(x_val[i : i + 100], y_val[i : i + 100]) for i in range(0, 400, 100)]
    return model, batches


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
        # bit-identical, including -0.0 vs 0.0 and NaN payloads
        assert torch.equal(after[k].view(torch.uint8), v.view(torch.uint8)) if v.is_floating_point() else True


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(self.drop(x.flatten(1)))


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_model_is_bit_identical_after_analysis(granularity: str) -> None:
    model = ConvNet()
    model.train()  # BatchNorm running stats and dropout must not be touched
    model.bn.eval()  # a mixed train/eval state must come back as it was
    set_mask(model.conv2, "weight", torch.rand_like(model.conv2.weight) > 0.3)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    model.conv1.weight.requires_grad_(False)
    ids = [id(p) for p in model.parameters()]
    before = snapshot(model)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    res = pk.sensitivity(
        model, data, F.cross_entropy, ratios=(0.3, 0.8), granularity=granularity, progress=False
    )
    assert res.names == ["conv1", "conv2", "fc"]
    assert_bit_identical(model, before)
    assert [id(p) for p in model.parameters()] == ids
    assert model.training and not model.bn.training and model.drop.training
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.5))
    assert model.conv1.weight.grad is None and model.conv2.weight.grad is None
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert get_mask(model.conv2, "weight") is not None


def test_curve_matches_an_independent_pruned_copy(trained: tuple[nn.Module, list]) -> None:
    """Oracle: prune a deep copy of the layer by hand (k smallest |w|) and evaluate it directly."""
    model, batches = trained
    res = pk.sensitivity(model, batches, F.cross_entropy, ratios=(0.25, 0.6), metric=accuracy, progress=False)
    for name, ratio_index in (("2", 0), ("4", 1)):
        ratio = (0.25, 0.6)[ratio_index]
        ref = copy.deepcopy(model).eval()
        w = dict(ref.named_modules())[name].weight
        k = round(ratio * w.numel())
        with torch.no_grad():
            idx = w.abs().flatten().argsort(stable=True)[:k]
            w.view(-1)[idx] = 0.0
            n = sum(len(y) for _, y in batches)
            loss = sum(float(F.cross_entropy(ref(x), y)) * len(y) for x, y in batches) / n
            acc = sum(accuracy(ref(x), y) * len(y) for x, y in batches) / n
        assert res.layer(name).loss[ratio_index] == pytest.approx(loss, rel=1e-6, abs=1e-7)
        assert res.layer(name).metric is not None
        assert res.layer(name).metric[ratio_index] == pytest.approx(acc, abs=1e-9)
    with torch.no_grad():
        base = sum(float(F.cross_entropy(model.eval()(x), y)) * len(y) for x, y in batches) / 400
    assert res.baseline_loss == pytest.approx(base, rel=1e-6)


def test_curves_are_monotone_ish_on_a_trained_model(trained: tuple[nn.Module, list]) -> None:
    model, batches = trained
    res = pk.sensitivity(model, batches, F.cross_entropy, metric=accuracy, progress=False)
    for la in res.layers:
        delta = res.delta(la.name)
        assert delta[-1] > delta[0]  # pruning 90% hurts more than 10%
        assert delta[-1] > 0.05
        assert la.metric is not None and la.metric[-1] < la.metric[0] + 1e-9
        # no large dips: each point is at least the running maximum minus a small noise margin
        run = -math.inf
        for d in delta:
            assert d >= run - 0.05
            run = max(run, d)
    assert res.baseline_metric is not None and res.baseline_metric > 0.85


def branch_data(model: nn.Module, n_batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_batches):
        x = torch.randn(64, 16, generator=gen)
        with torch.no_grad():
            y = model(x) + 0.01 * torch.randn(64, 4, generator=gen)
        out.append((x, y))
    return out


def test_one_pass_estimates_rank_layers_like_the_measured_curves() -> None:
    model = Branches()
    data = branch_data(model)
    res = pk.sensitivity(model, data, F.mse_loss, progress=False)
    assert res.ranking() == ["branches.3", "branches.2", "branches.1", "branches.0"]
    assert res.rank_correlation["fisher"] == pytest.approx(1.0)
    assert res.rank_correlation["taylor"] >= 0.8
    assert all(r == pytest.approx(1.0) for r in res.rank_correlation_per_ratio["fisher"])
    for la in res.layers:  # estimates grow with the ratio
        assert la.fisher is not None and list(la.fisher) == sorted(la.fisher)


def test_one_pass_estimates_correlate_on_a_trained_model(trained: tuple[nn.Module, list]) -> None:
    model, batches = trained
    res = pk.sensitivity(model, batches, F.cross_entropy, progress=False)
    # 3 layers: rank correlation is 1, 0.5, -0.5 or -1; the Fisher estimate must not invert the order
    assert res.rank_correlation["fisher"] >= 0.5


def test_channel_granularity_zeroes_whole_output_channels(trained: tuple[nn.Module, list]) -> None:
    model, batches = trained
    res = pk.sensitivity(
        model, batches, F.cross_entropy, ratios=(0.5,), granularity="channel", criterion="l2", progress=False
    )
    ref = copy.deepcopy(model).eval()
    layer = ref[0]
    rows = layer.weight.detach().square().sum(1).argsort(stable=True)[:24]
    with torch.no_grad():
        layer.weight[rows] = 0
        layer.bias[rows] = 0
        loss = sum(float(F.cross_entropy(ref(x), y)) * len(y) for x, y in batches) / 400
    assert res.layer("0").units == 48
    assert res.layer("0").loss[0] == pytest.approx(loss, rel=1e-6)
    assert res.granularity == "channel"


def test_results_round_trip_and_write_csv_and_png(trained: tuple[nn.Module, list], tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, batches = trained
    res = pk.sensitivity(model, batches, F.cross_entropy, ratios=(0.2, 0.7), metric=accuracy, progress=False)
    again = pk.SensitivityResult.from_dict(res.to_dict())
    assert again == res
    rows = res.to_csv(tmp_path / "s.csv").read_text().strip().splitlines()
    assert rows[0].startswith("layer,kind,numel,macs,ratio,loss,delta_loss,accuracy")
    assert len(rows) == 1 + 3 * 2
    png = res.plot(tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "rank correlation" in str(res)
    assert res.layer("0").macs == 64 * 48


def test_bad_input_raises_clearly_and_leaves_the_model_alone(trained: tuple[nn.Module, list]) -> None:
    model, batches = trained
    before = snapshot(model)
    with pytest.raises(pk.ConfigError, match="valid names are"):
        pk.sensitivity(model, batches, F.cross_entropy, criterion="nope", progress=False)
    with pytest.raises(pk.ConfigError, match="in \\(0, 1\\)"):
        pk.sensitivity(model, batches, F.cross_entropy, ratios=(0.5, 1.0), progress=False)
    with pytest.raises(pk.ConfigError, match="granularity"):
        pk.sensitivity(model, batches, F.cross_entropy, granularity="neuron", progress=False)  # type: ignore[arg-type]
    with pytest.raises(pk.DataRequiredError):
        pk.sensitivity(model, [], F.cross_entropy, progress=False)
    with pytest.raises(pk.ConfigError, match="pair"):
        pk.sensitivity(model, [torch.randn(2, 64)], F.cross_entropy, progress=False)
    with pytest.raises(pk.UnknownModuleError, match="fc9"):
        pk.sensitivity(model, batches, F.cross_entropy, include=["fc9"], progress=False)
    with pytest.raises(RuntimeError):  # the user's loss fails mid-analysis: weights must come back
        calls = []

        def failing(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            if len(calls) > 12:
                raise RuntimeError("boom")
            return F.cross_entropy(out, y)

        pk.sensitivity(model, batches, failing, estimate=False, progress=False)
    assert_bit_identical(model, before)


def test_dict_inputs_and_include_exclude() -> None:
    class KW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.b(torch.relu(self.a(x))) * scale

    model = KW()
    data = [({"x": torch.randn(5, 4), "scale": 2.0}, torch.randn(5, 2))]
    res = pk.sensitivity(model, data, F.mse_loss, exclude=["b"], ratios=(0.5,), progress=False)
    assert res.names == ["a"]
    res = pk.sensitivity(model, data, F.mse_loss, include=[nn.Linear], ratios=(0.5,), progress=False)
    assert res.names == ["a", "b"]


@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=12), st.randoms(use_true_random=False)
)
def test_spearman_matches_scipy(xs: list[float], rnd) -> None:  # type: ignore[no-untyped-def]
    stats = pytest.importorskip("scipy.stats")
    ys = [round(v, 1) for v in xs]  # ties
    rnd.shuffle(ys)
    ours = spearman(xs, ys)
    ref = float(stats.spearmanr(xs, ys).statistic) if len(set(xs)) > 1 and len(set(ys)) > 1 else math.nan
    assert (math.isnan(ours) and math.isnan(ref)) or ours == pytest.approx(ref, abs=1e-9)


@given(st.integers(1, 40), st.floats(0.0, 0.99))
def test_keep_mask_prunes_exactly_round_ratio_units(n: int, ratio: float) -> None:
    scores = torch.rand(n, 3)
    mask = keep_mask(scores, ratio, "layer")
    assert int((~mask).sum()) == round(ratio * n * 3)
    if (~mask).any() and mask.any():
        assert scores[~mask].max() <= scores[mask].min()
    rows = keep_mask(scores, ratio, "channel")
    assert int((~rows[:, 0]).sum()) == round(ratio * n)
    assert bool((rows == rows[:, :1]).all())
