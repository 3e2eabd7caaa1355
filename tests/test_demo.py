"""The demo runs, is seeded, and its table is sane (sparsity reached, fine-tuning helps, sizes shrink)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunekit.cli.demo import DemoConfig, DigitsCNN, _prune_weights, human_bytes, run_demo
from prunekit.errors import ConfigError


@pytest.fixture(scope="module")
def small_result():  # type: ignore[no-untyped-def]
    cfg = DemoConfig(
        sparsities=(0.5, 0.9),
        criteria=("magnitude", "wanda"),
        channel_ratios=(0.5,),
        epochs=6,
        finetune_epochs=1,
        latency_repeats=5,
    )
    return run_demo(cfg)


def test_demo_table_is_sane(small_result) -> None:  # type: ignore[no-untyped-def]
    rows = small_result.rows
    dense = rows[0]
    assert dense.method == "dense" and dense.sparsity == pytest.approx(0.0, abs=1e-3)
    assert dense.accuracy_finetuned > 0.9  # digits is easy: a trained CNN is far above chance (0.1)
    weights = [r for r in rows if r.method == "weights"]
    assert {(r.criterion, r.target) for r in weights} == {
        (c, s) for c in ("magnitude", "wanda") for s in (0.5, 0.9)
    }
    for r in weights:
        assert r.sparsity == pytest.approx(r.target, abs=0.01)
        assert r.params == dense.params
        # non-zeros drop by the pruned fraction of the prunable weights (biases/BN are not pruned)
        assert r.nonzeros < dense.nonzeros * (1 - r.target) + 1000
        assert 0.0 <= r.accuracy_pruned <= 1.0 and r.accuracy_finetuned > 0.8
        assert r.file_bytes > 0
    high = [r for r in weights if r.target == 0.9]
    assert all(r.nonzeros < [w for w in weights if w.target == 0.5][0].nonzeros for r in high)
    for r in (r for r in rows if r.method == "channels"):
        assert r.params < dense.params and r.macs < dense.macs  # channels are really gone


def test_every_demo_row_has_a_measured_latency(small_result) -> None:  # type: ignore[no-untyped-def]
    """No row may print "-": weight-pruned rows are timed after pk.accelerate, and the table says so."""
    rows = small_result.rows
    assert {r.method for r in rows} == {"dense", "weights", "channels"}
    for r in rows:
        assert r.latency_ms is not None and r.latency_ms > 0, r
        assert r.latency_iqr_ms is not None and r.latency_iqr_ms >= 0, r
        assert r.latency_note, r
    for r in rows:
        if r.method == "weights":
            assert r.latency_note.startswith("accelerated: "), r.latency_note
        else:
            assert r.latency_note == {"dense": "dense", "channels": "physically smaller"}[r.method]
    assert any("pk.accelerate" in n and "Conv2d" in n for n in small_result.notes)


def test_demo_table_prints_every_latency(small_result) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from prunekit.cli.demo import demo_table

    table = demo_table(small_result)
    latency = next(c for c in table.columns if c.header.startswith("latency b=256"))
    cells = list(latency.cells)
    assert len(cells) == len(small_result.rows)
    assert all(c.endswith(")") and " ms (" in c for c in cells), cells
    console = Console(width=250, record=True)
    console.print(table)
    assert "accelerated:" in console.export_text()


def test_accelerated_latency_keeps_the_model_and_matches_it() -> None:
    """The demo times a copy: the pruned model keeps its masks and trains; the copy computes the same."""
    import copy

    import torch

    from prunekit.accel import accelerate
    from prunekit.cli.demo import _accelerated_latency
    from prunekit.weights import prune_weights, sparsity

    torch.manual_seed(0)
    model = DigitsCNN()
    prune_weights(model, 0.95, scope="layer")
    before = copy.deepcopy(model.state_dict())
    ms, iqr, note = _accelerated_latency(model, torch.randn(256, 1, 8, 8), DemoConfig(latency_repeats=3))
    assert ms > 0 and iqr >= 0 and note.startswith("accelerated: ")
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert float(sparsity(model)) == pytest.approx(0.95, abs=0.01)
    # every kernel accelerate can choose computes the masked model (forced here, so timing cannot hide it)
    x = torch.randn(16, 1, 8, 8)
    for kernel in ("csr", "compact+csr"):
        fast = copy.deepcopy(model).eval()
        result = accelerate(fast, x, kernels=(kernel,), measure_model=False, timer=_prefer(kernel))
        assert any(c.kernel != "dense" for c in result.layers)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def _prefer(kernel: str):  # type: ignore[no-untyped-def]
    def timer(case, fns):  # type: ignore[no-untyped-def]
        return {k: (0.1 if k == kernel else 1.0) for k in case.kernels}

    return timer


def test_demo_is_seeded() -> None:
    cfg = DemoConfig(
        sparsities=(0.8,),
        criteria=("magnitude",),
        channel_ratios=(),
        epochs=2,
        finetune_epochs=1,
        latency_repeats=3,
    )
    a, b = run_demo(cfg), run_demo(cfg)
    strip = [(r.nonzeros, r.accuracy_pruned, r.accuracy_finetuned) for r in a.rows]
    assert strip == [(r.nonzeros, r.accuracy_pruned, r.accuracy_finetuned) for r in b.rows]


def test_demo_config_validates() -> None:
    with pytest.raises(ConfigError, match="sparsities"):
        DemoConfig(sparsities=(1.5,))
    with pytest.raises(ConfigError, match="epochs"):
        DemoConfig(epochs=0)


def test_human_bytes() -> None:
    assert human_bytes(10) == "10 B"
    assert human_bytes(2048) == "2.0 KiB"
    assert human_bytes(3 * 1024**2) == "3.0 MiB"


def test_digits_cnn_shapes() -> None:
    import torch

    assert DigitsCNN()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.slow
def test_prunekit_demo_command_full(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The real console command with its defaults, as the README runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "demo", "--json", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    rows = payload["rows"]
    assert len(rows) == 1 + 2 * 4 + 2  # dense, 2 criteria x 4 sparsities, 2 channel ratios
    assert [r["method"] for r in rows].count("channels") == 2
    assert all(r["params"] < rows[0]["params"] for r in rows if r["method"] == "channels")
    assert all(r["latency_ms"] is not None and r["latency_ms"] > 0 for r in rows), rows
    assert all(r["latency_note"].startswith("accelerated: ") for r in rows if r["method"] == "weights")
    assert payload["hardware"]["threads"] == 1 and payload["seconds"] > 0
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000
    # wanda at 95% with global scope prunes a layer away: said in a note, not as a Python warning
    assert "Warning" not in proc.stderr, proc.stderr
    away = [n for n in payload["notes"] if "to over 99%" in n]
    assert away and all(n.startswith("weights ") and "scope='layer'" in n for n in away), payload["notes"]


def test_pruned_away_layers_become_notes_and_other_warnings_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import prunekit.weights as weights
    from prunekit.errors import LayerPrunedAwayWarning

    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        model[0].weight.mul_(1e-3)  # global magnitude takes all of this layer first
    calib = DataLoader(TensorDataset(torch.randn(8, 64), torch.zeros(8, dtype=torch.long)), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerPrunedAwayWarning)  # must not escape
        notes = _prune_weights(model, 0.87, "magnitude", calib)
    assert len(notes) == 1 and "to over 99%: 0 (" in notes[0], notes
    real = weights.prune_weights

    def noisy(*a, **k):  # type: ignore[no-untyped-def]
        warnings.warn("not the demo's to hide", UserWarning, stacklevel=2)
        return real(*a, **k)

    monkeypatch.setattr(weights, "prune_weights", noisy)
    with pytest.warns(UserWarning, match="not the demo's"):  # other warnings still reach the user
        assert _prune_weights(nn.Sequential(nn.Linear(8, 8)), 0.5, "magnitude", calib) == []
