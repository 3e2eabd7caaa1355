"""Energy estimate (hand-computed) and the per-state report (counts checked against independent sums)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.accel import accelerate
from prunekit.accel.energy import EnergyCosts, energy_estimate
from prunekit.accel.states import effective_macs, model_state_report, model_states, weight_bytes

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::prunekit.errors.LayerPrunedAwayWarning"),
]


def test_energy_by_hand() -> None:
    e = energy_estimate(macs=10, weight_bytes=8, activation_bytes=4)
    assert e.compute_pj == pytest.approx(10 * (3.7 + 0.9))
    assert e.weights_pj == pytest.approx(2 * 640)
    assert e.activations_pj == pytest.approx(1 * 2 * 5)
    assert e.total_pj == pytest.approx(46 + 1280 + 10)
    assert "estimate" in e.note and "Horowitz" in e.note
    q = energy_estimate(macs=10, weight_bytes=2, precision="int8")
    assert q.compute_pj == pytest.approx(10 * 0.23) and q.weights_pj == pytest.approx(0.5 * 640)
    custom = energy_estimate(macs=1, weight_bytes=0, costs=EnergyCosts(fp32_mult=1.0, fp32_add=0.0))
    assert custom.total_pj == 1.0
    with pytest.raises(pk.ConfigError, match="precision"):
        energy_estimate(macs=1, weight_bytes=1, precision="fp16")  # type: ignore[arg-type]


def timer_csr(case: object, fns: object) -> dict[str, float]:
    return {k: 1.0 if k == "dense" else 0.1 for k in case.kernels}  # type: ignore[attr-defined]


def test_effective_macs_and_weight_bytes_of_an_accelerated_layer() -> None:
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    pk.prune_weights(model, 0.75)
    x = torch.randn(3, 64)
    assert effective_macs(model, x) == 3 * 64 * 32  # masked dense multiplies every zero
    accelerate(model, x, timer=timer_csr)
    nnz = 64 * 32 // 4
    assert effective_macs(model, x) == 3 * nnz
    # CSR: float32 values + int32 column indices + int32 row pointers (33)
    assert weight_bytes(model) == nnz * 4 + nnz * 4 + 33 * 4


def test_model_state_report_has_every_state(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    pruned = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    pruned.load_state_dict(dense.state_dict())
    pk.prune_weights(pruned, 0.9)
    x = torch.randn(1, 64)
    states = model_states(dense, pruned, x, tmp_path, accelerate_kwargs={"timer": timer_csr})
    rows = model_state_report(states, x, large_batch=4, rounds=3)
    by = {r["state"]: r for r in rows}
    assert list(by) == ["dense", "pruned", "accelerated", "exported", "quantized"]
    n = 64 * 128 + 128 + 128 * 10 + 10
    assert all(r["params"] == n for r in rows)
    assert by["dense"]["nonzeros"] == n and by["pruned"]["nonzeros"] < 0.2 * n
    assert by["accelerated"]["macs"] < 0.2 * by["dense"]["macs"] == 0.2 * (64 * 128 + 128 * 10)
    assert by["quantized"]["energy"]["precision"] == "int8"
    assert by["quantized"]["energy"]["total_pj"] < by["exported"]["energy"]["total_pj"]
    assert by["pruned"]["file_bytes"] < by["dense"]["file_bytes"]
    assert by["quantized"]["file_bytes"] < by["exported"]["file_bytes"]
    for r in rows:
        assert set(r["latency"]) == {"1", "4"} and all(v["median_ms"] > 0 for v in r["latency"].values())
    assert by["exported"]["peak_memory_bytes"] is None and by["dense"]["peak_memory_bytes"] > 0
