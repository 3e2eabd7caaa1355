"""Lottery tickets: masks, rewinding (to init and to step k), controls, results files."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.datasets import digits
from prunekit.core.masks import masked_parameters


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def _loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    return digits().loaders(batch_size=64, seed=0)


def _lr_by_level(lrs: list[float]):  # type: ignore[no-untyped-def]
    calls = iter(lrs)
    return lambda params: torch.optim.SGD(params, lr=next(calls), momentum=0.9)


@pytest.mark.parametrize("rewind_step", [0, 7])
def test_ticket_is_magnitude_mask_of_trained_weights_rewound(rewind_step: int) -> None:
    # Oracle run: train the dense net with the same data order and record theta_k and theta_T.
    steps = 30
    train, test = _loaders()
    oracle = _mlp()
    snap: dict[int, dict[str, torch.Tensor]] = {}
    if rewind_step == 0:
        snap[0] = {k: v.clone() for k, v in oracle.state_dict().items()}

    def keep(step: int) -> None:
        if step == rewind_step:
            snap[step] = {k: v.clone() for k, v in oracle.state_dict().items()}

    pk.fit(
        oracle, torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.9), train, steps=steps, on_step=keep
    )
    trained = oracle.state_dict()

    train, test = _loaders()
    model = _mlp()
    # level 0 trains with lr 0.1; level 1 with lr 0 so the ticket keeps its rewound weights
    res = pk.lottery_ticket(
        model,
        train,
        optimizer=_lr_by_level([0.1, 0.0]),
        val_loader=test,
        rounds=1,
        rate=0.5,
        output_rate=0.25,
        steps_per_round=steps,
        eval_every=10,
        rewind_step=rewind_step,
    )
    for name, rate in (("1", 0.5), ("3", 0.25)):
        w = trained[f"{name}.weight"].abs().flatten()
        k = math.floor(rate * w.numel() + 0.5)
        expected = torch.ones_like(w, dtype=torch.bool)
        expected[torch.topk(w, k, largest=False).indices] = False
        mask = getattr(model, name).weight_mask.flatten()
        assert torch.equal(mask, expected)
        rewound = snap[rewind_step][f"{name}.weight"].flatten() * expected
        assert torch.equal(getattr(model, name).weight.detach().flatten(), rewound)
        assert torch.equal(getattr(model, name).bias.detach(), snap[rewind_step][f"{name}.bias"])
    assert res.table.column("kind") == ["dense", "ticket"]


def test_controls_match_ticket_sparsity_and_files_are_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train, test = _loaders()
    model = _mlp()
    res = pk.lottery_ticket(
        model,
        train,
        optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
        val_loader=test,
        test_loader=test,
        rounds=2,
        rate=0.5,
        scope="global",
        steps_per_round=20,
        eval_every=5,
        controls=("reinit", "random_mask"),
        output_dir=tmp_path,
    )
    rows = res.table.rows
    assert [(r["round"], r["kind"]) for r in rows] == [
        (0, "dense"),
        (1, "ticket"),
        (1, "reinit"),
        (1, "random_mask"),
        (2, "ticket"),
        (2, "reinit"),
        (2, "random_mask"),
    ]
    n = sum(mp.mask.numel() for mp in masked_parameters(model))
    for level in (1, 2):
        ss = res.table.column("sparsity", round=level)
        assert max(ss) == min(ss)
        assert abs(ss[0] * n - math.floor((1 - 0.5**level) * n + 0.5)) <= 1
    for r in rows:
        assert r["early_stop_step"] in range(5, 21, 5)
        assert 0.0 <= r["early_stop_accuracy"] <= 1.0
    data = json.loads((tmp_path / "lottery.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "lottery.csv").read_text().startswith("round,kind,sparsity")
    assert (tmp_path / "lottery.png").read_bytes()[:4] == b"\x89PNG"
    assert res.sparsity == rows[-3]["sparsity"]


def test_lottery_rejects_bad_settings() -> None:
    train, test = _loaders()
    with pytest.raises(pk.ConfigError, match="factory"):
        pk.lottery_ticket(
            _mlp(),
            train,
            optimizer=torch.optim.SGD(_mlp().parameters(), lr=0.1),
            val_loader=test,
            rounds=1,
            steps_per_round=5,
        )
    with pytest.raises(pk.ConfigError, match="control"):
        pk.LotteryConfig(rounds=1, steps_per_round=5, controls=("shuffle",))
    with pytest.raises(pk.ConfigError, match="output_rate"):
        pk.LotteryConfig(rounds=1, steps_per_round=5, scope="global", output_rate=0.1)
    with pytest.raises(pk.ConfigError, match="rewind_step"):
        pk.LotteryConfig(rounds=1, steps_per_round=5, rewind_step=9)
