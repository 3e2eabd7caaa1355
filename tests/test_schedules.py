"""Schedules: closed forms, validation, and a Pruner that follows them exactly at every step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit as pk
from prunekit.training.pruner import mask_sparsity
from prunekit.training.schedules import (
    ConstantSchedule,
    CubicSchedule,
    IterativeSchedule,
    Schedule,
    make_schedule,
    schedule_from_dict,
)


def _reference_cubic(t: int, s_i: float, s_f: float, t0: int, dt: int, t_end: int) -> float:
    """Independent oracle: the Zhu & Gupta ramp, evaluated at the last pruning step <= t."""
    if t < t0:
        return 0.0
    updates = [u for u in range(t0, t_end + 1, dt)] + [t_end]
    last = max(u for u in updates if u <= t)
    if t_end == t0:
        return s_f
    return s_f + (s_i - s_f) * (1 - (last - t0) / (t_end - t0)) ** 3


def _train_and_track(schedule: Schedule, steps: int, scope: str = "global") -> list[tuple[int, int, float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pk.Pruner(model, pk.PrunerConfig(schedule=schedule, scope=scope))  # type: ignore[arg-type]
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    n_weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    seen = []
    for t in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        target = pruner.step()
        assert target == schedule.sparsity(t)
        pruned = round(mask_sparsity(model) * n_weights)
        zeros = sum(int((m.weight == 0).sum()) for m in model if isinstance(m, nn.Linear))
        seen.append((t, pruned, target))
        assert zeros >= pruned  # every masked weight is exactly zero after the optimizer step
    return seen


def test_cubic_doc_values_match_the_formula() -> None:
    s = CubicSchedule(final_sparsity=0.9, start_step=100, end_step=1100, frequency=100, initial_sparsity=0.1)
    for t in range(0, 1300, 7):
        assert s.sparsity(t) == pytest.approx(_reference_cubic(t, 0.1, 0.9, 100, 100, 1100), abs=1e-12)
    assert (
        s.sparsity(99) == 0.0
        and s.sparsity(100) == pytest.approx(0.1)
        and s.sparsity(5000) == pytest.approx(0.9)
    )
    assert s.update_steps(1300) == list(range(100, 1101, 100))


@given(
    s_f=st.floats(0.05, 0.95),
    frac_i=st.floats(0.0, 1.0),
    t0=st.integers(0, 20),
    n=st.integers(0, 8),
    dt=st.integers(1, 7),
    extra=st.integers(0, 6),
)
def test_cubic_matches_reference_and_is_monotone(
    s_f: float, frac_i: float, t0: int, n: int, dt: int, extra: int
) -> None:
    s_i = s_f * frac_i
    t_end = t0 + n * dt + extra  # end not always on the grid: it is still an update step
    s = CubicSchedule(final_sparsity=s_f, initial_sparsity=s_i, start_step=t0, end_step=t_end, frequency=dt)
    values = [s.sparsity(t) for t in range(t_end + 5)]
    for t, v in enumerate(values):
        assert v == pytest.approx(_reference_cubic(t, s_i, s_f, t0, dt, t_end), abs=1e-12)
        if t:
            assert v >= values[t - 1] - 1e-12
            assert (v != values[t - 1]) <= s.is_update(t)  # changes happen only on update steps
    assert values[-1] == pytest.approx(s_f)


@given(
    target=st.floats(0.05, 0.97), rate=st.floats(0.05, 0.8), every=st.integers(1, 5), start=st.integers(0, 5)
)
def test_iterative_reaches_target_in_rounds(target: float, rate: float, every: int, start: int) -> None:
    s = IterativeSchedule(final_sparsity=target, rate=rate, every=every, start_step=start)
    ups = s.update_steps(start + every * (s.rounds + 3))
    assert len(ups) == s.rounds and ups[0] == start
    after = [s.sparsity(u) for u in ups]
    for k, v in enumerate(after[:-1], start=1):
        assert v == pytest.approx(1 - (1 - rate) ** k)
        assert v < target
    assert after[-1] == pytest.approx(target)
    assert s.last_update_step == ups[-1]


@settings(max_examples=8)
@given(
    kind=st.sampled_from(["cubic", "iterative", "constant"]),
    final=st.floats(0.1, 0.9),
    start=st.integers(0, 3),
    length=st.integers(1, 6),
    freq=st.integers(1, 3),
    scope=st.sampled_from(["global", "layer"]),
)
def test_pruner_follows_schedule_exactly_at_every_step(
    kind: str, final: float, start: int, length: int, freq: int, scope: str
) -> None:
    if kind == "cubic":
        sched: Schedule = CubicSchedule(
            final_sparsity=final, start_step=start, end_step=start + length, frequency=freq
        )
    elif kind == "iterative":
        sched = IterativeSchedule(final_sparsity=final, rate=0.4, every=freq, start_step=start)
    else:
        sched = ConstantSchedule(final_sparsity=final, at_step=start)
    steps = sched.last_update_step + 3
    sizes = [6 * 12, 12 * 3]
    n = sum(sizes)
    for t, pruned, target in _train_and_track(sched, steps, scope):
        if scope == "global":
            expected = math.floor(target * n + 0.5)
            assert abs(pruned - expected) <= 1, (t, pruned, expected)
        else:
            expected = sum(math.floor(target * k + 0.5) for k in sizes)
            assert abs(pruned - expected) <= len(sizes), (t, pruned, expected)


def test_registry_and_round_trip() -> None:
    for sched in (
        ConstantSchedule(final_sparsity=0.5, at_step=3),
        IterativeSchedule(final_sparsity=0.9, rate=0.2, every=10),
        CubicSchedule(final_sparsity=0.8, start_step=1, end_step=9, frequency=2),
    ):
        assert schedule_from_dict(sched.to_dict()) == sched
    assert make_schedule("gradual", final_sparsity=0.5, start_step=0, end_step=4).end_sparsity() == 0.5


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_schedule("nope"),
        lambda: ConstantSchedule(final_sparsity=1.0),
        lambda: IterativeSchedule(final_sparsity=0.5, rate=0.0, every=1),
        lambda: CubicSchedule(final_sparsity=0.5, start_step=10, end_step=5),
        lambda: CubicSchedule(final_sparsity=0.5, initial_sparsity=0.7, start_step=0, end_step=5),
        lambda: CubicSchedule(final_sparsity=0.5, start_step=0, end_step=5, frequency=0),
        lambda: make_schedule("cubic", final_sparsity=0.5, bogus=1),
    ],
)
def test_bad_schedules_raise_config_error(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pk.ConfigError):
        build()
