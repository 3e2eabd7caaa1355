"""A small measured kernel table per machine: how fast CSR is against dense, by tokens and sparsity.

One reference Linear layer (``1024 x 1024`` by default) is timed dense and with the CSR kernels
:func:`prunekit.accel.accelerate` chooses from (``csr``, and the column-split ``csr/2``, ``csr/4``
where the layer is wide enough), run exactly as :class:`~prunekit.kernels.SparseLinear` runs them,
at a grid of token counts and sparsities, on this machine and thread count; each cell keeps the
fastest CSR kernel::

    tokens      1      8     32    128    512
    dense     0.09   0.21   0.50   1.80   6.9     ms
    csr@0.50  0.45   ...                         ms   -> ratio csr/dense, interpolated
    csr@0.90  0.07   ...                              in log(tokens) and sparsity
    ...

A layer of another shape is predicted by scaling the dense time by its weight count and applying
the interpolated ratio. The table is cached as JSON in the user cache directory
(``$PRUNEKIT_CACHE_DIR`` or ``$XDG_CACHE_HOME/prunekit`` or ``~/.cache/prunekit``) under
``kernels-<fingerprint>.json``, written atomically; decisions made from it (warnings, estimates)
can be tested with a table given by hand.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunekit.core import hardware_info
from prunekit.errors import ConfigError, FormatError
from prunekit.kernels.kernels import SparseLinear, csr_kernels
from prunekit.kernels.plan import fingerprint
from prunekit.kernels.timing import fresh_inputs, interleaved_ms, num_threads

TABLE_FORMAT = "prunekit.kernels"
# 4: csr-numba/K too; 3: csr-numba among the kernels; 2: fastest of csr, csr/2, csr/4; 1: plain csr
TABLE_VERSION = 4
CACHE_ENV = "PRUNEKIT_CACHE_DIR"
DEFAULT_TOKENS = (1, 8, 32, 128, 512)
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass(frozen=True, kw_only=True)
class KernelTable:
    """Measured dense and CSR milliseconds of one reference Linear layer on one machine.

    Attributes:
        fingerprint: machine + thread count the timings hold for (:func:`prunekit.kernels.plan.fingerprint`).
        shape: the reference layer ``(out_features, in_features)``.
        tokens: token counts (rows of the input), increasing.
        sparsities: sparsities of the CSR rows, increasing.
        dense_ms: dense time per token count.
        csr_ms: ``csr_ms[i][j]``: CSR time at ``sparsities[i]`` and ``tokens[j]`` (fastest CSR kernel).
        kernels: ``kernels[i][j]``: which CSR kernel that was (empty: not recorded).
        hardware: the :class:`~prunekit.metrics.HardwareInfo` as a dict (for reports).

    Example:
        >>> t = KernelTable(fingerprint="x", shape=(1024, 1024), tokens=(1, 128), sparsities=(0.5, 0.9),
        ...                 dense_ms=(0.1, 2.0), csr_ms=((0.4, 8.0), (0.05, 1.0)))
        >>> round(t.ratio(tokens=1, sparsity=0.7), 3)  # csr / dense, halfway between 4.0 and 0.5
        2.25
        >>> round(t.crossover(tokens=1), 4)  # ratio 1.0 between 0.5 (4.0) and 0.9 (0.5)
        0.8429
    """

    fingerprint: str
    shape: tuple[int, int]
    tokens: tuple[int, ...]
    sparsities: tuple[float, ...]
    dense_ms: tuple[float, ...]
    csr_ms: tuple[tuple[float, ...], ...]
    kernels: tuple[tuple[str, ...], ...] = ()
    hardware: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tokens or list(self.tokens) != sorted(set(self.tokens)) or min(self.tokens) < 1:
            raise ConfigError(f"kernel table tokens must be increasing positive ints, got {self.tokens}")
        if not self.sparsities or list(self.sparsities) != sorted(set(self.sparsities)):
            raise ConfigError(f"kernel table sparsities must be increasing, got {self.sparsities}")
        if len(self.dense_ms) != len(self.tokens) or len(self.csr_ms) != len(self.sparsities):
            raise ConfigError(
                "kernel table: dense_ms needs one time per token count, csr_ms one row per sparsity"
            )
        if any(len(row) != len(self.tokens) for row in self.csr_ms):
            raise ConfigError("kernel table: every csr_ms row needs one time per token count")
        if self.kernels and [len(r) for r in self.kernels] != [len(r) for r in self.csr_ms]:
            raise ConfigError("kernel table: kernels needs one name per csr_ms cell (or none at all)")
        if any(not v > 0 for v in (*self.dense_ms, *(v for row in self.csr_ms for v in row))):
            raise ConfigError("kernel table times must be positive milliseconds")

    def _token_pos(self, tokens: int) -> tuple[int, int, float]:
        lt = [math.log(t) for t in self.tokens]
        x = math.log(max(1, tokens))
        if x <= lt[0]:
            return 0, 0, 0.0
        if x >= lt[-1]:
            return len(lt) - 1, len(lt) - 1, 0.0
        j = bisect.bisect_right(lt, x) - 1
        return j, j + 1, (x - lt[j]) / (lt[j + 1] - lt[j])

    def _ratio_at(self, i: int, tokens: int) -> float:
        a, b, w = self._token_pos(tokens)
        ra = self.csr_ms[i][a] / self.dense_ms[a]
        rb = self.csr_ms[i][b] / self.dense_ms[b]
        return ra + w * (rb - ra)

    def ratio(self, *, tokens: int, sparsity: float) -> float:
        """CSR time / dense time for a layer at ``sparsity`` run on ``tokens`` rows (< 1: CSR wins).

        Below the table's lowest sparsity the ratio is the lowest row's (CSR only gets worse);
        above the highest it is scaled by the kept fraction.
        """
        s = self.sparsities
        if sparsity <= s[0]:
            return self._ratio_at(0, tokens)
        if sparsity >= s[-1]:
            return self._ratio_at(len(s) - 1, tokens) * (1 - sparsity) / max(1e-9, 1 - s[-1])
        i = bisect.bisect_right(list(s), sparsity) - 1
        w = (sparsity - s[i]) / (s[i + 1] - s[i])
        return self._ratio_at(i, tokens) + w * (self._ratio_at(i + 1, tokens) - self._ratio_at(i, tokens))

    def kernel(self, *, tokens: int, sparsity: float) -> str:
        """The CSR kernel measured fastest in the cell nearest to ``tokens`` and ``sparsity`` (``"csr"`` if not recorded)."""
        if not self.kernels:
            return "csr"
        i = min(range(len(self.sparsities)), key=lambda k: abs(self.sparsities[k] - sparsity))
        lt = math.log(max(1, tokens))
        j = min(range(len(self.tokens)), key=lambda k: abs(math.log(self.tokens[k]) - lt))
        return self.kernels[i][j]

    def crossover(self, *, tokens: int, margin: float = 1.0) -> float | None:
        """Lowest sparsity at which CSR is ``margin`` times faster than dense here, or ``None`` if never."""
        s = self.sparsities
        target = 1.0 / margin
        prev_s, prev_r = None, None
        for i, si in enumerate(s):
            r = self._ratio_at(i, tokens)
            if r <= target:
                if prev_s is None or prev_r is None:
                    return si
                return prev_s + (prev_r - target) / (prev_r - r) * (si - prev_s)
            prev_s, prev_r = si, r
        return None

    def dense_ms_for(self, out_features: int, in_features: int, tokens: int) -> float:
        """Predicted dense time of a layer: the reference time at ``tokens``, scaled by weight count."""
        a, b, w = self._token_pos(tokens)
        ref = math.exp(
            math.log(self.dense_ms[a]) + w * (math.log(self.dense_ms[b]) - math.log(self.dense_ms[a]))
        )
        if tokens > self.tokens[-1]:
            ref *= tokens / self.tokens[-1]
        return ref * (out_features * in_features) / (self.shape[0] * self.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "fingerprint": self.fingerprint,
                "shape": list(self.shape), "tokens": list(self.tokens), "sparsities": list(self.sparsities),
                "dense_ms": list(self.dense_ms), "csr_ms": [list(r) for r in self.csr_ms],
                "kernels": [list(r) for r in self.kernels], "hardware": dict(self.hardware)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any) -> KernelTable:
        """Inverse of :meth:`to_dict`.

        Raises:
            FormatError: not a kernel table, another version, or malformed.
        """
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise FormatError(
                f"not a prunekit kernel table (expected format {TABLE_FORMAT!r}); delete it to re-measure"
            )
        if data.get("version") != TABLE_VERSION:
            raise FormatError(
                f"kernel table version {data.get('version')!r}, expected {TABLE_VERSION}; delete it to re-measure"
            )
        try:
            shape = tuple(int(v) for v in data["shape"])
            return cls(fingerprint=str(data["fingerprint"]), shape=(shape[0], shape[1]),
                       tokens=tuple(int(v) for v in data["tokens"]),
                       sparsities=tuple(float(v) for v in data["sparsities"]),
                       dense_ms=tuple(float(v) for v in data["dense_ms"]),
                       csr_ms=tuple(tuple(float(v) for v in row) for row in data["csr_ms"]),
                       kernels=tuple(tuple(str(v) for v in row) for row in data.get("kernels", [])),
                       hardware=dict(data.get("hardware", {})))  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise FormatError(f"kernel table is malformed ({e}); delete it to re-measure") from e


def cache_dir() -> Path:
    """``$PRUNEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "prunekit"


def table_path(fp: str | None = None, directory: str | os.PathLike[str] | None = None) -> Path:
    """Where this machine's table lives: ``<cache_dir>/kernels-<fingerprint>.json``."""
    return (Path(directory) if directory is not None else cache_dir()) / f"kernels-{fp or fingerprint()}.json"


def save_table(table: KernelTable, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``table`` as JSON atomically (temporary file in the same directory, then rename)."""
    target = Path(path) if path is not None else table_path(table.fingerprint)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(table.to_dict(), f, indent=1)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def cached_table(path: str | os.PathLike[str] | None = None) -> KernelTable | None:
    """This machine's cached table (current thread count), or ``None`` if none was measured.

    A table whose fingerprint is not this machine's is ignored (``None``).
    """
    p = Path(path) if path is not None else table_path()
    if not p.is_file():
        return None
    try:
        table = KernelTable.from_dict(json.loads(p.read_text()))
    except (OSError, json.JSONDecodeError, FormatError):
        return None
    return table if path is not None or table.fingerprint == fingerprint() else None


def measure_table(*, shape: tuple[int, int] = (1024, 1024), tokens: tuple[int, ...] = DEFAULT_TOKENS,
                  sparsities: tuple[float, ...] = DEFAULT_SPARSITIES, threads: int | None = None,
                  rounds: int = 15) -> KernelTable:  # fmt: skip
    """Time the reference layer dense and with every CSR kernel on this machine (a few seconds to a minute).

    Each sparsity is timed on its own, dense alongside (as :func:`prunekit.accel.accelerate` times one
    layer); kernels clearly slower than the fastest are screened out after 3 rounds
    (:func:`~prunekit.kernels.timing.interleaved_ms`). A cell keeps its fastest CSR kernel, as its
    ratio to that group's dense time times the median dense time.
    """
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    b = torch.randn(shape[0], generator=g)
    names = csr_kernels(shape[1])
    with num_threads(threads) as used:
        dense: list[float] = []
        csr: list[list[float]] = [[] for _ in sparsities]
        best: list[list[str]] = [[] for _ in sparsities]
        for t in tokens:
            x = torch.randn(t, shape[1], generator=g)
            dense_t: list[float] = []
            ratios: list[tuple[float, str]] = []
            for s in sparsities:
                # one sparsity at a time, dense alongside: the conditions accelerate times a layer in
                # (timing all 19 together leaves every kernel a colder cache: 20-30% slower CSR here)
                mask = torch.rand(shape, generator=g) >= s
                fns: dict[str, Any] = {"dense": lambda x=x: F.linear(x, w, b)}
                for k in names:  # exactly what accelerate times: SparseLinear on a contiguous x
                    layer = SparseLinear(w, b, mask, kernel=k)
                    fns[k] = fresh_inputs(layer, x)  # a new input each call, as in a model
                ms = interleaved_ms(fns, rounds=rounds, screen=1.5, keep=("dense",))
                k = min(names, key=lambda k: ms[k])
                dense_t.append(ms["dense"])
                ratios.append((ms[k] / ms["dense"], k))
            ref = statistics.median(dense_t)
            dense.append(ref)
            for i, (ratio, k) in enumerate(ratios):
                csr[i].append(ratio * ref)
                best[i].append(k)
        info = hardware_info(used)
    return KernelTable(fingerprint=fingerprint(info), shape=shape, tokens=tuple(tokens), sparsities=tuple(sparsities),
                       dense_ms=tuple(dense), csr_ms=tuple(tuple(r) for r in csr),
                       kernels=tuple(tuple(r) for r in best), hardware=info.to_dict())  # fmt: skip


def kernel_table(path: str | os.PathLike[str] | None = None, *, measure: bool = True, threads: int | None = None
                 ) -> KernelTable | None:  # fmt: skip
    """This machine's table: from the cache, else measured now and cached (``measure=False``: ``None``)."""
    with num_threads(threads):
        table = cached_table(path)
        if table is None and measure:
            table = measure_table()
            save_table(table, path if path is not None else table_path(table.fingerprint))
    return table


__all__ = [
    "CACHE_ENV",
    "DEFAULT_SPARSITIES",
    "DEFAULT_TOKENS",
    "KernelTable",
    "cache_dir",
    "cached_table",
    "kernel_table",
    "measure_table",
    "save_table",
    "table_path",
]
