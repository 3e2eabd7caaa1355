"""Metrics: latency done properly (threads fixed and restored, median/IQR), peak forward memory, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.core.metrics import (
    _quartiles,
    count_macs,
    count_nonzeros,
    count_params,
    forward_peak_memory,
    hardware_info,
    measure_latency,
    param_bytes,
)
from prunekit.errors import ConfigError
from prunekit.io import file_size


def test_latency_fixes_threads_and_restores_them() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x * 2

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = measure_latency(Probe(), torch.ones(3), repeats=7, warmup=2, threads=1)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(old)
    assert seen == [1] * 9  # 2 warm-up + 7 timed calls, all on one thread
    assert r.repeats == 7 and r.warmup == 2 and r.threads == 1 and r.hardware.threads == 1
    assert 0 < r.min_ms <= r.q1_ms <= r.median_ms <= r.q3_ms
    assert r.iqr_ms == pytest.approx(r.q3_ms - r.q1_ms)


def test_latency_leaves_mode_and_restores_on_error() -> None:
    model = nn.Linear(4, 2).train()
    measure_latency(model, torch.randn(1, 4), repeats=2, warmup=0)
    assert model.training  # eval only while timing

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    old = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        measure_latency(Boom(), torch.ones(1), threads=1)
    assert torch.get_num_threads() == old


def test_latency_min_time_extends_repeats() -> None:
    r = measure_latency(nn.Identity(), torch.ones(1), repeats=1, warmup=0, min_time_s=0.02)
    assert r.repeats > 1


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"threads": 0}])
def test_latency_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="repeats >= 1"):
        measure_latency(nn.Identity(), torch.ones(1), **kwargs)


@given(st.lists(st.floats(0.001, 100.0), min_size=2, max_size=50))
def test_quartiles_match_numpy(values: list[float]) -> None:
    q1, q3 = _quartiles(values)
    assert q1 == pytest.approx(np.percentile(values, 25))
    assert q3 == pytest.approx(np.percentile(values, 75))


def test_hardware_info_describes_this_machine() -> None:
    info = hardware_info()
    assert info.cores >= 1 and info.torch == torch.__version__ and info.cpu
    assert info.threads == torch.get_num_threads()
    assert set(info.to_dict()) == {"cpu", "cores", "threads", "machine", "system", "python", "torch"}
    assert info.torch in str(info)


@given(st.integers(1, 16), st.integers(1, 32), st.integers(1, 32))
def test_peak_memory_of_an_mlp_is_exact(batch: int, hidden: int, out: int) -> None:
    """Oracle: Linear -> ReLU -> Linear keeps two (B, hidden) activations alive at the peak (float32)."""
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, out))
    expected = max(2 * batch * hidden * 4, batch * hidden * 4 + batch * out * 4)
    assert forward_peak_memory(model, torch.randn(batch, 8)) == expected


def test_peak_memory_excludes_weights() -> None:
    big = nn.Linear(1000, 1000)  # 4 MB of weights, 8 KB of output
    assert forward_peak_memory(big, torch.randn(2, 1000)) == 2 * 1000 * 4
    assert param_bytes(big) == (1000 * 1000 + 1000) * 4


def test_counts_and_macs() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert count_params(model) == 8 * 16 + 16 + 16 * 4 + 4
    assert count_macs(model, torch.randn(3, 8)) == 3 * (8 * 16 + 16 * 4)
    pk.prune_weights(model, 0.5, scope="layer")
    assert count_nonzeros(model) == count_params(model) - (8 * 16 + 16 * 4) // 2


def test_file_size_shrinks_with_sparsity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    dense = file_size(model)
    assert dense >= 2 * 256 * 256 * 4  # fp32 weights at least
    pk.prune_weights(model, 0.9)
    sparse = file_size(model)
    assert sparse < 0.3 * dense  # non-zeros plus positions, far below dense
