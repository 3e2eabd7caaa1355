"""Advice before pruning: will this pruning be faster here? Warnings and latency estimates.

The decision is a pure function of a :class:`~prunekit.kernels.table.KernelTable` (or, without one,
of the byte count of CSR) so it is tested with hand-made tables::

    layer (out, in, sparsity) ──► best CSR/dense ratio over the table's token counts
                                  < 1/margin somewhere  -> can be faster (no warning)
                                  else                  -> SpeedupWarning naming the crossover
                                                           sparsity and structured pruning

Rules of :func:`warn_if_no_speedup` (so that small models and tests stay quiet):

* only ``Linear`` and ``Conv2d`` layers with at least ``min_weights`` (default 2**20) weights count
  (a conv as the ``(out, in * kh * kw)`` matrix its sparse kernels multiply); smaller layers are
  overhead-bound and their speed rarely matters;
* with this machine's cached kernel table (or a given one): warn when no counted layer reaches the
  measured crossover at any token count in the table;
* without a table: warn only where physics forbids a speedup, i.e. at most 50% sparsity (CSR
  stores a 4-byte index with every 4-byte value, so it moves at least as many bytes as dense);
* ``PRUNEKIT_SPEEDUP_WARNING=0`` in the environment turns the warning off; or filter
  :class:`SpeedupWarning` with :mod:`warnings`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prunekit.kernels.table import KernelTable, cached_table

ENV_SWITCH = "PRUNEKIT_SPEEDUP_WARNING"
MIN_WEIGHTS = 1 << 20
KINDS = ("Linear", "Conv2d")  # the layer types accelerate has sparse kernels for


class SpeedupWarning(UserWarning):
    """The pruning asked for cannot make inference faster on this machine (it still saves memory)."""


@dataclass(frozen=True, kw_only=True)
class SpeedupAdvice:
    """Whether unstructured/N:M pruning of some layers can run faster here, and what would.

    Attributes:
        can_speed_up: at least one counted layer reaches the crossover at some token count.
        best_speedup: the best predicted dense/CSR ratio over layers and token counts (1.0 = none).
        crossover: lowest sparsity at which CSR beats dense at the best token count (``None``:
            never in the table, or no table).
        counted: names of the layers the decision looked at.
        message: the warning text (empty when ``can_speed_up``).
    """

    can_speed_up: bool
    best_speedup: float
    crossover: float | None
    counted: tuple[str, ...]
    message: str


def advise(layers: Iterable[tuple[str, str, tuple[int, ...], float]], *, table: KernelTable | None,
           pattern: str | None = None, min_weights: int = MIN_WEIGHTS, margin: float = 1.1) -> SpeedupAdvice | None:  # fmt: skip
    """Decide from ``(name, kind, shape, sparsity)`` rows; ``None`` when no layer is big enough to count.

    Example:
        >>> t = KernelTable(fingerprint="x", shape=(1024, 1024), tokens=(1, 128), sparsities=(0.5, 0.9),
        ...                 dense_ms=(0.1, 2.0), csr_ms=((0.4, 8.0), (0.05, 1.0)))
        >>> advise([("fc", "Linear", (4096, 4096), 0.5)], table=t, pattern="2:4").can_speed_up
        False
        >>> advise([("fc", "Linear", (4096, 4096), 0.95)], table=t).can_speed_up
        True
    """
    counted = [(n, s) for n, kind, shape, s in layers if kind in KINDS and _numel(shape) >= min_weights]
    if not counted:
        return None
    names = tuple(n for n, _ in counted)
    top = max(s for _, s in counted)
    if table is None:
        if top > 0.5:
            return SpeedupAdvice(
                can_speed_up=True, best_speedup=1.0, crossover=None, counted=names, message=""
            )
        best, cross, where = (
            1.0,
            None,
            "here (no kernel table measured: CSR stores a 4-byte index per 4-byte value)",
        )
    else:
        best = max(1.0 / table.ratio(tokens=t, sparsity=s) for _, s in counted for t in table.tokens)
        if best >= margin:
            return SpeedupAdvice(
                can_speed_up=True, best_speedup=best, crossover=None, counted=names, message=""
            )
        crossings = [
            (c, t) for t in table.tokens if (c := table.crossover(tokens=t, margin=margin)) is not None
        ]
        cross, t_best = min(crossings) if crossings else (None, None)
        where = f"on this machine (measured kernel table, {table.hardware.get('threads', '?')} thread(s))"
    what = f"N:M pattern {pattern!r} (CPUs have no N:M kernels: it runs as {top:.0%} unstructured)" if pattern \
        else f"{top:.0%} unstructured sparsity"  # fmt: skip
    fix = "structured pruning (pk.prune_channels) removes whole rows and makes every layer smaller"
    if table is not None and cross is not None:
        fix += f", or unstructured sparsity >= {cross:.0%} (CSR crossover at {t_best} tokens)"
    elif table is not None:
        fix += "; unstructured sparsity never beat dense in the measured table"
    else:
        fix += ", or unstructured sparsity well above 50% (measure with pk.speedup_estimate)"
    msg = (f"{what} cannot make inference faster {where}: best predicted speedup {best:.2f}x over "
           f"{len(names)} large Linear/Conv2d layer(s). It still shrinks the saved file. For speed use {fix}. "
           f"Silence with warnings.filterwarnings('ignore', category=SpeedupWarning) or {ENV_SWITCH}=0.")  # fmt: skip
    return SpeedupAdvice(can_speed_up=False, best_speedup=best, crossover=cross, counted=names, message=msg)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def warn_if_no_speedup(result: Any, *, table: KernelTable | None = None, min_weights: int = MIN_WEIGHTS,
                       stacklevel: int = 3) -> SpeedupAdvice | None:  # fmt: skip
    """Warn (:class:`SpeedupWarning`) when a ``prune_weights`` result cannot be faster here.

    Never measures anything: it reads ``table`` or this machine's cached table (see the module
    docstring for the rules). Called at the end of :func:`prunekit.prune_weights`.

    Args:
        result: a :class:`~prunekit.weights.WeightPruningResult` (``.layers`` rows with ``name``,
            ``kind``, ``shape``, ``sparsity``; ``.pattern``).
        table: a kernel table; default the cached one of this machine, if any.
        min_weights: only Linear and Conv2d layers at least this big count.
        stacklevel: passed to :func:`warnings.warn` (3 = the caller of ``prune_weights``).

    Returns:
        The advice, or ``None`` when nothing was decided (switched off, no big layer).
    """
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    rows = [(r.name, r.kind, tuple(r.shape), float(r.sparsity)) for r in result.layers]
    if table is None and any(k in KINDS and _numel(sh) >= min_weights for _, k, sh, _ in rows):
        table = cached_table()
    advice = advise(rows, table=table, pattern=getattr(result, "pattern", None), min_weights=min_weights)
    if advice is not None and not advice.can_speed_up:
        warnings.warn(advice.message, SpeedupWarning, stacklevel=stacklevel)
    return advice


__all__ = ["ENV_SWITCH", "MIN_WEIGHTS", "SpeedupAdvice", "SpeedupWarning", "advise", "warn_if_no_speedup"]
