"""Long calls say what they do: INFO log lines from fit / train, and the CLI shows them while loading."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.training.progress import StepLog


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=8)


def test_steplog_logs_start_each_tenth_and_end(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("prunekit.test_steplog")
    with caplog.at_level(logging.INFO, logger="prunekit.test_steplog"):
        log = StepLog(logger, "job", total=20, min_seconds=0)
        for i in range(1, 21):
            log.step(i)
        log.done("ok")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "job: 20 steps"
    assert [ln.split(",")[0] for ln in lines[1:-1]] == [
        f"job: step {i}/20 (" + f"{5 * i}%)" for i in range(2, 21, 2)
    ]
    assert lines[-1].startswith("job: done in ") and lines[-1].endswith(", ok")


def test_fit_logs_its_progress(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 2))
    with caplog.at_level(logging.INFO, logger="prunekit"):
        pk.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(), steps=16, val_loader=_loader())
    msgs = [r.getMessage() for r in caplog.records if r.name == "prunekit.training.loop"]
    assert msgs[0] == "fit: 16 steps"
    assert msgs[-1].startswith("fit: done in ") and "validation loss" in msgs[-1]


def test_iterative_prune_logs_each_round(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with caplog.at_level(logging.INFO, logger="prunekit"):
        pk.iterative_prune(model, _loader(), sparsity=0.5, rate=0.3, steps_per_round=2,
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.01))  # fmt: skip
    msgs = [r.getMessage() for r in caplog.records if r.name == "prunekit.training.iterative"]
    rounds = [m for m in msgs if " round " in m]
    assert msgs[0].endswith("2 rounds") and len(rounds) == 2 and "sparsity" in rounds[-1]


def test_cli_shows_library_log_lines_while_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from prunekit.cli.commands import log_to_stderr

    with log_to_stderr(True):
        logging.getLogger("examples.models").info("training the example model x")
    with log_to_stderr(False):
        logging.getLogger("prunekit.x").info("hidden")
    err = capsys.readouterr().err
    assert "examples.models: training the example model x" in err and "hidden" not in err
