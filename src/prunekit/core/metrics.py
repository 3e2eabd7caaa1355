"""Measurements: parameters, non-zeros, MACs, latency, peak memory of a forward, file size.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmul, conv, attention; elementwise
ops are not counted, as is usual); one multiply-accumulate = 2 FLOPs.

Latency is measured the way a benchmark should be: a fixed number of threads (restored afterwards),
warm-up runs that are thrown away, many timed repeats, and the median with its spread (inter-quartile
range), reported together with the hardware it ran on (:func:`hardware_info`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import ConfigError


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_nonzeros(model: nn.Module) -> int:
    """Number of non-zero parameter elements (shared parameters counted once)."""
    return sum(int(torch.count_nonzero(p)) for p in {id(p): p for p in model.parameters()}.values())


def _as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (a tensor, tuple or kwargs dict)."""
    args, kwargs = _as_args(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


@dataclass(frozen=True, kw_only=True)
class HardwareInfo:
    """Where a measurement ran: CPU model, logical cores, threads used, Python and torch versions."""

    cpu: str
    cores: int
    threads: int
    machine: str
    system: str
    python: str
    torch: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.cpu} ({self.cores} cores, {self.threads} thread{'s' if self.threads != 1 else ''}), "
            f"{self.system} {self.machine}, Python {self.python}, torch {self.torch}"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware_info(threads: int | None = None) -> HardwareInfo:
    """Describe this machine (CPU model from ``/proc/cpuinfo`` or :mod:`platform`).

    Args:
        threads: the intra-op thread count the measurement used; default ``torch.get_num_threads()``.

    Example:
        >>> info = hardware_info(threads=1)
        >>> info.threads, info.cores >= 1
        (1, True)
    """
    return HardwareInfo(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        threads=torch.get_num_threads() if threads is None else threads,
        machine=platform.machine(),
        system=platform.system(),
        python=platform.python_version(),
        torch=torch.__version__,
    )


@dataclass(frozen=True, kw_only=True)
class LatencyResult:
    """Latency of one forward pass in milliseconds: median and spread over ``repeats`` timed runs.

    ``iqr_ms`` is the inter-quartile range ``q3_ms - q1_ms``: half of the runs lie inside it.
    """

    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    repeats: int
    warmup: int
    threads: int
    hardware: HardwareInfo

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms (IQR {self.iqr_ms:.3f} ms, n={self.repeats}, {self.threads} thread(s))"
        )


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
    min_time_s: float = 0.0,
) -> LatencyResult:
    """Measure the CPU latency of one forward pass (no grad, eval mode; the model is left as it was).

    ``torch.set_num_threads(threads)`` is applied for the measurement and the previous value is
    restored afterwards, so numbers are comparable between models and runs on the same machine.

    Args:
        model: the model to time.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        repeats: timed runs (at least 1); the median and inter-quartile range are taken over them.
        warmup: untimed runs first (allocator, caches, lazy init).
        threads: intra-op threads to use while timing.
        min_time_s: keep timing beyond ``repeats`` until this much time was spent (0 = exactly ``repeats``).

    Returns:
        A :class:`LatencyResult` with the hardware it ran on.

    Raises:
        ConfigError: if ``repeats < 1``, ``warmup < 0`` or ``threads < 1``.

    Example:
        >>> r = measure_latency(torch.nn.Linear(8, 4), torch.randn(2, 8), repeats=5, warmup=1)
        >>> r.repeats, r.threads, r.q1_ms <= r.median_ms <= r.q3_ms
        (5, 1, True)
    """
    if repeats < 1 or warmup < 0 or threads < 1:
        raise ConfigError(
            f"measure_latency needs repeats >= 1, warmup >= 0 and threads >= 1; "
            f"got repeats={repeats}, warmup={warmup}, threads={threads}"
        )
    args, kwargs = _as_args(example_inputs)
    old_threads = torch.get_num_threads()
    was_training = model.training
    times: list[float] = []
    try:
        torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(*args, **kwargs)
            start_all = time.perf_counter()
            while len(times) < repeats or (time.perf_counter() - start_all) < min_time_s:
                t0 = time.perf_counter_ns()
                model(*args, **kwargs)
                times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
    q1, q3 = _quartiles(times)
    return LatencyResult(
        median_ms=statistics.median(times),
        q1_ms=q1,
        q3_ms=q3,
        iqr_ms=q3 - q1,
        min_ms=min(times),
        mean_ms=statistics.fmean(times),
        repeats=len(times),
        warmup=warmup,
        threads=threads,
        hardware=hardware_info(threads),
    )


class _LiveStorageTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts the bytes of every tensor storage created by an op while it is alive; keeps the peak."""

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weakref = StorageWeakRef
        self.exclude = exclude  # storages of parameters, buffers and inputs (views of them cost nothing)
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def _purge(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._purge()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.exclude:
                    nbytes = storage.nbytes()
                    self.live[key] = (self._weakref(storage), nbytes)  # type: ignore[no-untyped-call]
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def forward_peak_memory(model: nn.Module, example_inputs: Any) -> int:
    """Peak bytes of tensors created during one no-grad forward pass (parameters and inputs excluded).

    Counted exactly from tensor storages as ops create and free them (a ``TorchDispatchMode``), so the
    number does not depend on the allocator or on other processes. Add :func:`param_bytes` for the
    total a forward needs.

    Example:
        >>> forward_peak_memory(torch.nn.Linear(8, 4), torch.randn(2, 8))  # a (2, 4) float32 output
        32
    """
    args, kwargs = _as_args(example_inputs)
    was_training = model.training
    model.eval()
    existing = list(model.parameters()) + list(model.buffers()) + tree_flatten((args, kwargs))[0]
    tracker = _LiveStorageTracker(
        {t.untyped_storage()._cdata for t in existing if isinstance(t, torch.Tensor)}
    )
    try:
        with torch.no_grad(), tracker:
            out = model(*args, **kwargs)
        del out
    finally:
        model.train(was_training)
    return tracker.peak


def param_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (shared tensors counted once)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``.

    Example:
        >>> human_bytes(1536)
        '1.5 KiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


__all__ = [
    "human_bytes",
    "HardwareInfo",
    "LatencyResult",
    "count_macs",
    "count_nonzeros",
    "count_params",
    "forward_peak_memory",
    "hardware_info",
    "measure_latency",
    "param_bytes",
]
