"""Timing that survives a shared machine: candidates alternate, medians are kept.

Every round times each candidate once (a short burst of calls), in a rotated order, so slow phases
of the machine (another process, frequency changes) hit all candidates alike; the per-candidate
median over rounds is the result::

    round 0:  dense  csr    bsr4
    round 1:  csr    bsr4   dense
    round 2:  bsr4   dense  csr      ...   -> median per candidate

With ``screen`` set, candidates that are clearly out of the race after the first ``screen_rounds``
rounds (median more than ``screen`` times the fastest one's) stop being timed; their result is the
median of the rounds they ran. The names in ``keep`` (the baseline) are timed to the end, unless
they are all that is left (then timing stops: there is nothing left to decide).
Most of the time of a search over kernels goes to the slow losers, so this cuts it without
changing the winner.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch


@contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run with ``torch.set_num_threads(threads)`` (``None``: leave as is); restore afterwards."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def fresh_inputs(fn: Callable[[torch.Tensor], object], x: torch.Tensor) -> Callable[[], object]:
    """``fn(x)`` and ``fn(copy of x)`` in turn: same values, never the same tensor twice in a row.

    A sparse layer keeps the ``x.T`` it made for the next layer that reads the same unchanged tensor
    (attention's q, k and v share one copy): timed on one input over and over, every call after the
    first skipped that copy. Inside a model a layer's input is new on every forward, so the copy is part
    of its time (768x3072 at 95%, 1024 tokens, 2 threads: 5.9 ms on one input, 12.7 on two in turn;
    dense the same 15.3).
    """
    inputs = (x, x.clone())  # clone keeps the strides: a transposed view stays one
    turn = [0]

    def call() -> object:
        turn[0] ^= 1
        return fn(inputs[turn[0]])

    return call


def calls_per_burst(fn: Callable[[], object], target_s: float = 2e-3) -> int:
    """How many calls of ``fn`` take about ``target_s`` (at least 1), from one warm call."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, min(1000, int(target_s / max(dt, 1e-7))))


def interleaved_ms(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 15,
    warmup: int = 2,
    target_s: float = 2e-3,
    threads: int | None = None,
    screen: float | None = None,
    screen_rounds: int = 3,
    keep: tuple[str, ...] = (),
) -> dict[str, float]:
    """Median milliseconds per call of every function, timed in alternating rounds.

    Args:
        fns: name -> zero-argument callable.
        rounds: timed rounds; each round runs every function once (a burst of calls).
        warmup: untimed calls of each function first.
        target_s: length of one burst (calls are repeated to reach it, so tiny kernels are not
            timer-bound).
        threads: intra-op threads (restored afterwards); ``None`` keeps the current setting.
        screen: after ``screen_rounds`` rounds, stop timing candidates whose median is more than
            ``screen`` times the fastest median (``None``: time every candidate every round).
        screen_rounds: rounds before screening.
        keep: names never screened out (e.g. the dense baseline).

    Example:
        >>> ms = interleaved_ms({"a": lambda: None, "b": lambda: sum(range(100))}, rounds=3)
        >>> sorted(ms), all(v >= 0 for v in ms.values())
        (['a', 'b'], True)
    """
    if screen is not None and not screen >= 1.0:
        raise ValueError(f"screen must be None or >= 1.0 (a time ratio), got {screen!r}")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with num_threads(threads), torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                fns[name]()
        bursts = {n: calls_per_burst(fns[n], target_s) for n in names}
        for r in range(max(1, rounds)):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                fn, k = fns[name], bursts[name]
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                times[name].append((time.perf_counter() - t0) * 1e3 / k)
            if screen is not None and r + 1 == screen_rounds and len(names) > 1:
                med = {n: statistics.median(times[n]) for n in names}
                best = min(med.values())
                names = [n for n in names if n in keep or med[n] <= screen * best]
                if keep and set(names) <= set(keep):
                    break  # only the baseline is left: nothing to decide
    return {n: statistics.median(v) for n, v in times.items()}


__all__ = ["calls_per_burst", "fresh_inputs", "interleaved_ms", "num_threads"]
