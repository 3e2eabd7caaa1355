"""interleaved_ms with a fake clock: which candidates are timed for how many rounds (no real timing)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import torch

import prunekit.kernels.timing as timing
from prunekit.accel import AccelerateConfig
from prunekit.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: Counter[str] = Counter()

    def perf_counter(self) -> float:
        return self.now

    def fn(self, name: str, ms: float) -> Callable[[], None]:
        def run() -> None:
            self.calls[name] += 1
            self.now += ms / 1e3

        return run


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", c.perf_counter)
    return c


def test_without_screen_every_candidate_runs_every_round(clock: FakeClock) -> None:
    fns = {"dense": clock.fn("dense", 2.0), "fast": clock.fn("fast", 1.0), "slow": clock.fn("slow", 10.0)}
    ms = timing.interleaved_ms(fns, rounds=10, warmup=0, target_s=0.0)
    assert ms == pytest.approx({"dense": 2.0, "fast": 1.0, "slow": 10.0})
    assert clock.calls["slow"] == clock.calls["dense"] == clock.calls["fast"]


def test_screen_stops_timing_clear_losers_only(clock: FakeClock) -> None:
    fns = {"dense": clock.fn("dense", 2.0), "fast": clock.fn("fast", 1.0),
           "close": clock.fn("close", 1.4), "slow": clock.fn("slow", 10.0)}  # fmt: skip
    ms = timing.interleaved_ms(fns, rounds=10, warmup=0, target_s=0.0, screen=1.5, keep=("dense",))
    # every median is still reported, the slow one from the rounds it ran
    assert ms == pytest.approx({"dense": 2.0, "fast": 1.0, "close": 1.4, "slow": 10.0})
    # 2 calibration calls + 1 timing call per round: slow ran 3 rounds, the others 10
    assert clock.calls["slow"] == 2 + 3
    assert clock.calls["close"] == clock.calls["fast"] == 2 + 10
    # the baseline is kept although it is 2x the fastest
    assert clock.calls["dense"] == 2 + 10


def test_screen_stops_when_only_the_baseline_is_left(clock: FakeClock) -> None:
    fns = {"dense": clock.fn("dense", 1.0), "csr": clock.fn("csr", 3.0), "bsr4": clock.fn("bsr4", 5.0)}
    ms = timing.interleaved_ms(fns, rounds=15, warmup=0, target_s=0.0, screen=1.5, keep=("dense",))
    assert min(ms, key=lambda k: ms[k]) == "dense"
    assert clock.calls == Counter({"dense": 5, "csr": 5, "bsr4": 5})  # 2 + 3 rounds each


def test_bad_screen_is_refused() -> None:
    with pytest.raises(ValueError, match="screen"):
        timing.interleaved_ms({"a": lambda: None}, rounds=1, screen=0.5)
    with pytest.raises(ConfigError, match="screen"):
        AccelerateConfig(screen=0.9)


def test_fresh_inputs_never_pass_the_same_tensor_twice_in_a_row() -> None:
    """Timing a sparse layer on one input again and again would reuse its cached x.T (no copy)."""
    from prunekit.kernels import fresh_inputs

    x = torch.randn(6, 4).t()  # a transposed view: the copy keeps its strides
    seen: list[torch.Tensor] = []
    call = fresh_inputs(seen.append, x)
    for _ in range(4):
        call()
    assert [id(t) for t in seen[:2]] == [id(t) for t in seen[2:]] and seen[0] is not seen[1]
    assert all(torch.equal(t, x) and t.stride() == x.stride() for t in seen)
