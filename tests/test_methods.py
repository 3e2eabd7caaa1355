"""Methods: iterative pruning and one-shot + fine-tune on sklearn digits (fast), and the training helper."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.datasets import digits
from prunekit.core.masks import masked_parameters


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture()
def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    return digits().loaders(batch_size=64, seed=0)


def _trained(loaders) -> nn.Module:  # type: ignore[no-untyped-def]
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pk.fit(model, opt, loaders[0], epochs=5)
    return model


def test_fit_trains_and_evaluate_measures(loaders) -> None:  # type: ignore[no-untyped-def]
    model = _mlp()
    before = pk.evaluate(model, loaders[1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    res = pk.fit(model, opt, loaders[0], epochs=4, val_loader=loaders[1], eval_every=10)
    assert res.steps == 4 * len(loaders[0])
    assert [h["step"] for h in res.history][:3] == [10, 20, 30]
    assert res.final is not None and res.final.accuracy > 0.85 > before.accuracy
    assert res.best is not None and res.best["loss"] == min(h["loss"] for h in res.history)
    assert pk.train_epoch(model, loaders[0], opt) < before.loss
    with pytest.raises(pk.ConfigError):
        pk.fit(model, opt, loaders[0])


def test_iterative_prune_reaches_target_and_recovers(loaders) -> None:  # type: ignore[no-untyped-def]
    model = _trained(loaders)
    dense = pk.evaluate(model, loaders[1]).accuracy
    res = pk.iterative_prune(
        model,
        loaders[0],
        sparsity=0.8,
        rate=0.5,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        epochs_per_round=1,
        val_loader=loaders[1],
    )
    rounds = math.ceil(math.log(0.2) / math.log(0.5))
    assert res.table.column("round") == list(range(rounds + 1))
    n = sum(mp.mask.numel() for mp in masked_parameters(model))
    for row in res.table.rows[1:]:
        assert abs(row["sparsity"] * n - math.floor(row["target"] * n + 0.5)) <= 1
    assert res.table.rows[1]["target"] == pytest.approx(0.5)
    assert res.sparsity == pytest.approx(0.8, abs=1 / n)
    assert pk.sparsity(model) >= 0.8 - 1 / n  # weights really are zero
    assert res.accuracy is not None and res.accuracy > dense - 0.04, (res.accuracy, dense)


def test_one_shot_then_finetune_recovers_accuracy(loaders) -> None:  # type: ignore[no-untyped-def]
    model = _trained(loaders)
    res = pk.one_shot_then_finetune(
        model,
        loaders[0],
        sparsity=0.95,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        epochs=2,
        val_loader=loaders[1],
        eval_every=20,
    )
    stages = res.table.column("stage")
    assert stages[0] == "dense" and stages[1] == "pruned" and stages[-1] == "finetuned"
    pruned, tuned = (
        res.table.column("accuracy", stage="pruned")[0],
        res.table.column("accuracy", stage="finetuned")[0],
    )
    assert tuned > pruned  # fine-tuning brings accuracy back
    assert res.sparsity == pytest.approx(0.95, abs=1e-3)
    for mp in masked_parameters(model):
        assert bool((mp.param[~mp.mask] == 0).all())


def test_methods_validate_before_touching_the_model(loaders) -> None:  # type: ignore[no-untyped-def]
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.ConfigError):
        pk.iterative_prune(model, loaders[0], sparsity=1.2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(pk.ConfigError):
        pk.one_shot_then_finetune(model, loaders[0], sparsity=0.5, optimizer="adam", epochs=1)  # type: ignore[arg-type]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_results_table_files(tmp_path, loaders) -> None:  # type: ignore[no-untyped-def]
    from prunekit.training.methods import ResultsTable

    t = ResultsTable("t", [{"a": 1, "b": 0.5, "g": "x"}, {"a": 2, "b": 0.25, "g": "y"}])
    paths = t.write(tmp_path, x="a", ys=["b"], group="g")
    assert paths["csv"].read_text().splitlines() == ["a,b,g", "1,0.5,x", "2,0.25,y"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
