"""Timing that survives a shared machine: candidates alternate, medians are kept.

Every round times each candidate once (a short burst of calls), in a rotated order, so slow phases
of the machine (another process, frequency changes) hit all candidates alike; the per-candidate
median over rounds is the result::

    round 0:  dense  csr    bsr4
    round 1:  csr    bsr4   dense
    round 2:  bsr4   dense  csr      ...   -> median per candidate
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
) -> dict[str, float]:
    """Median milliseconds per call of every function, timed in alternating rounds.

    Args:
        fns: name -> zero-argument callable.
        rounds: timed rounds; each round runs every function once (a burst of calls).
        warmup: untimed calls of each function first.
        target_s: length of one burst (calls are repeated to reach it, so tiny kernels are not
            timer-bound).
        threads: intra-op threads (restored afterwards); ``None`` keeps the current setting.

    Example:
        >>> ms = interleaved_ms({"a": lambda: None, "b": lambda: sum(range(100))}, rounds=3)
        >>> sorted(ms), all(v >= 0 for v in ms.values())
        (['a', 'b'], True)
    """
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
    return {n: statistics.median(v) for n, v in times.items()}


__all__ = ["calls_per_burst", "interleaved_ms", "num_threads"]
