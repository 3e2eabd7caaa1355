"""The ``csr-numba`` kernel: CSR x dense compiled for this CPU by numba (optional: ``pip install numba``).

``y.T = W @ x.T`` row by row: for each kept weight ``W[r, c]`` add ``W[r, c] * x.T[c, :]`` to
``y.T[r, :]``, eight kept weights per pass over the row (one load and store of ``y.T[r, :]`` for eight
multiply-adds, vectorized over the tokens by LLVM for the machine it runs on: AVX-512 here, NEON on
ARM). On BERT-base layer shapes at 80-95% sparsity and 128 tokens this was 1.5-2.5x faster than
torch's MKL CSR on one thread on an AMD EPYC, 1.2-1.5x on an Intel Xeon (sweeps outside the repo;
end to end: ``benchmarks/speed.py``);
:func:`prunekit.accel.accelerate` still times it against dense and the other kernels on each
layer and keeps the fastest.

With more than one torch thread and enough work (:class:`ThreadBounds`) the rows are split into
parts of equal kept-weight count, one per thread. Where torch runs on an OpenMP runtime this process
can call (GNU's or Intel's, found on Linux: :func:`in_openmp_team`) the parts run on torch's own
OpenMP threads, in one ``GOMP_parallel`` region as torch's ``at::parallel_for`` opens: those threads
spin after each torch op, so they start at once (a Python thread had to wait ~0.3 ms for the core the
spinning thread held). Elsewhere, or with ``PRUNEKIT_CSR_THREADS=pool``, they run on a Python thread
pool (the kernel releases the GIL), as they do in a forked child (GNU OpenMP hangs in a child forked
after its parent ran a parallel region). No numba threading layer is used, so no second OpenMP runtime
is loaded.

numba is imported, and the kernel compiled (about a second per dtype), on first use only.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import torch

_NUMBA_TYPES = {torch.float32: "float32", torch.float64: "float64"}  # torch dtype -> numba type name
DTYPES = tuple(_NUMBA_TYPES)


@cache
def available() -> bool:
    """numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


@cache
def version() -> str | None:
    """numba's version, or ``None`` when it is not installed (part of the timing fingerprint)."""
    if not available():
        return None
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("numba")
    except PackageNotFoundError:
        return None


def supports(dtype: torch.dtype, device: torch.device) -> bool:
    """The kernel can run weights of this dtype on this device (numba installed, CPU, fp32/fp64)."""
    return available() and device.type == "cpu" and dtype in DTYPES


def _rows_kernel(crow: Any, col: Any, val: Any, xt: Any, bias: Any, out: Any, r0: int, r1: int) -> None:
    """``out[r] = bias[r] + sum_j val[j] * xt[col[j]]`` for rows ``r0 <= r < r1`` (compiled by numba).

    ``crow`` is ``(parts, rows + 1)``: part ``p`` holds the kept weights of one column range, ``crow[p, r]``
    to ``crow[p, r + 1]`` those of row ``r`` (``col`` global); the parts run one after the other over all
    the rows, so the rows of ``xt`` one part reads stay in cache (one part: plain CSR).
    """
    tokens = out.shape[1]
    for p in range(crow.shape[0]):
        for r in range(r0, r1):
            o = out[r]
            if p == 0:
                b = bias[r]
                for t in range(tokens):
                    o[t] = b
            j = crow[p, r]
            hi = crow[p, r + 1]
            while j + 8 <= hi:
                x0 = xt[col[j]]
                x1 = xt[col[j + 1]]
                x2 = xt[col[j + 2]]
                x3 = xt[col[j + 3]]
                x4 = xt[col[j + 4]]
                x5 = xt[col[j + 5]]
                x6 = xt[col[j + 6]]
                x7 = xt[col[j + 7]]
                v0 = val[j]
                v1 = val[j + 1]
                v2 = val[j + 2]
                v3 = val[j + 3]
                v4 = val[j + 4]
                v5 = val[j + 5]
                v6 = val[j + 6]
                v7 = val[j + 7]
                for t in range(tokens):
                    o[t] += ((v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])) + (
                        (v4 * x4[t] + v5 * x5[t]) + (v6 * x6[t] + v7 * x7[t])
                    )
                j += 8
            if j + 4 <= hi:
                x0 = xt[col[j]]
                x1 = xt[col[j + 1]]
                x2 = xt[col[j + 2]]
                x3 = xt[col[j + 3]]
                v0 = val[j]
                v1 = val[j + 1]
                v2 = val[j + 2]
                v3 = val[j + 3]
                for t in range(tokens):
                    o[t] += (v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])
                j += 4
            while j < hi:
                x0 = xt[col[j]]
                v0 = val[j]
                for t in range(tokens):
                    o[t] += v0 * x0[t]
                j += 1


_compile_lock = threading.Lock()


def _prefer_wide_vectors(numba: Any) -> None:
    """Ask LLVM for 512-bit vectors on an AVX-512 CPU (unless ``NUMBA_CPU_FEATURES`` is set).

    LLVM's tuning for Intel server cores prefers 256-bit vectors (``prefer-256-bit``); on the kernel
    above 512-bit ones were about 15% faster on a Xeon with AVX-512 (AMD's Zen 4 tuning uses them
    already). numba reads this setting when it creates its target machine, at its first compilation in
    the process: after that (the user's own numba code compiled first) this changes nothing.
    """
    if numba.config.CPU_FEATURES is not None:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


@cache
def _compiled(dtype: torch.dtype) -> Callable[..., None]:
    import numba

    _prefer_wide_vectors(numba)
    # fused multiply-adds and reassociation only: no fast-math assumption that inputs hold no inf/NaN
    kind = _NUMBA_TYPES[dtype]
    signature = f"void(int32[:, ::1], int32[::1], {kind}[::1], {kind}[:, ::1], {kind}[::1], {kind}[:, ::1], int64, int64)"
    with _compile_lock:
        fn = numba.njit(
            signature, fastmath={"contract", "reassoc"}, nogil=True, boundscheck=False, cache=False
        )(_rows_kernel)
    return fn


def compile_for(dtype: torch.dtype) -> None:
    """Compile the kernel for ``dtype`` now (else on first call; about a second), and with more than one
    torch thread its OpenMP-team callback too."""
    _compiled(dtype)
    if torch.get_num_threads() > 1 and in_openmp_team():
        _team_worker(dtype)


# --------------------------------------------------------------------------- torch's OpenMP team

OMP_RUNTIMES = ("libgomp", "libiomp5")  # GNU's, and Intel's (which exports GNU's GOMP_* entry points)


@cache
def _openmp() -> tuple[Any, int] | None:
    """The OpenMP runtime torch runs its intra-op threads on, as a ``ctypes`` library, and the process
    that found it; ``None`` if there is none to call.

    Found among the shared libraries mapped into this process (Linux ``/proc/self/maps``); used only when
    exactly one such runtime is loaded, torch's parallel backend is OpenMP, and it exports
    ``GOMP_parallel``, ``omp_get_thread_num`` and ``omp_get_num_threads``. Elsewhere (macOS, Windows, two
    runtimes in one process) the rows go to a Python thread pool instead.
    """
    if os.environ.get("PRUNEKIT_CSR_THREADS", "").lower() == "pool":
        return None
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    pattern = rf"/(?:{'|'.join(OMP_RUNTIMES)})[^/\s]*\.so[^/\s]*$"
    paths = {line.split()[-1] for line in maps.splitlines() if re.search(pattern, line)}
    if len(paths) != 1 or "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        lib = ctypes.CDLL(paths.pop())  # already loaded by torch: the same handle, the same thread team
        parallel = lib.GOMP_parallel
        for name in ("omp_get_thread_num", "omp_get_num_threads"):
            getattr(lib, name)
    except (OSError, AttributeError):
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    return lib, os.getpid()


def in_openmp_team() -> bool:
    """More torch threads run the kernel on torch's own OpenMP threads (else on a Python thread pool).

    Only in the process that found the runtime: a child forked after its parent ran OpenMP threads hangs
    in its first parallel region (GNU OpenMP; torch's own ops too), so a forked child uses the pool.
    """
    if not available():
        return False
    found = _openmp()
    return found is not None and found[1] == os.getpid()


@cache
def _team_worker(dtype: torch.dtype) -> Any:
    """A C callback (numba ``cfunc``) that each thread of an OpenMP team runs: its share of the row parts.

    Its one argument points at int64s: the addresses of crow, col, values, x.T, bias and out, then rows,
    tokens, kept weights, in_features, the number of column parts (``crow``'s first dim), the number of
    row parts and the ``parts + 1`` row edges.
    """
    import numba
    from numba import types
    from numba.core.extending import intrinsic
    from numba.np.numpy_support import carray

    pointer: Any = types.CPointer
    found = _openmp()
    assert found is not None
    lib = found[0]
    thread_num, num_threads = lib.omp_get_thread_num, lib.omp_get_num_threads
    for fn in (thread_num, num_threads):
        fn.argtypes, fn.restype = [], ctypes.c_int
    value = getattr(types, _NUMBA_TYPES[dtype])

    def pointer_to(kind: Any) -> Any:
        @intrinsic
        def as_pointer(typingctx: Any, address: Any) -> Any:
            sig = pointer(kind)(types.int64)

            def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
                return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

            return sig, codegen

        return as_pointer

    ints, values = pointer_to(types.int32), pointer_to(value)
    rows_kernel = _compiled(dtype)

    def worker(d: Any) -> None:
        rows, tokens, nnz, inp, cparts, parts = d[6], d[7], d[8], d[9], d[10], d[11]
        crow = carray(ints(d[0]), (cparts, rows + 1))
        col = carray(ints(d[1]), nnz)
        val = carray(values(d[2]), nnz)
        xt = carray(values(d[3]), (inp, tokens))
        bias = carray(values(d[4]), rows)
        out = carray(values(d[5]), (rows, tokens))
        part = thread_num()
        step = num_threads()
        while part < parts:
            rows_kernel(crow, col, val, xt, bias, out, d[12 + part], d[13 + part])
            part += step

    with _compile_lock:
        return numba.cfunc(types.void(pointer(types.int64)), nogil=True)(worker)


def _run_in_team(fn_args: tuple[Any, ...], dtype: torch.dtype, bounds: list[int]) -> None:
    """Run the row parts ``bounds`` on torch's OpenMP threads (one ``GOMP_parallel`` region, as an
    ``at::parallel_for`` opens): the threads are torch's own, spinning after the last op, so no wake-up."""
    import numpy as np

    crow, col, val, xt, bias, out = fn_args
    parts = len(bounds) - 1
    d = np.array([crow.ctypes.data, col.ctypes.data, val.ctypes.data, xt.ctypes.data, bias.ctypes.data,
                  out.ctypes.data, out.shape[0], out.shape[1], val.shape[0], xt.shape[0], crow.shape[0], parts,
                  *bounds],
                 dtype=np.int64)  # fmt: skip
    found = _openmp()
    assert found is not None
    found[0].GOMP_parallel(_team_worker(dtype).address, d.ctypes.data, parts, 0)


_pools: tuple[int, dict[int, ThreadPoolExecutor]] = (os.getpid(), {})
_pools_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads for this process, one per size (a forked child gets its own;
    a pool is never shut down while another call could still be submitting to it)."""
    global _pools
    with _pools_lock:
        if _pools[0] != os.getpid():
            _pools = (os.getpid(), {})
        pool = _pools[1].get(workers)
        if pool is None:
            pool = _pools[1][workers] = ThreadPoolExecutor(workers, thread_name_prefix="prunekit-csr")
        return pool


def row_bounds(crow: torch.Tensor, parts: int) -> list[int]:
    """``parts + 1`` row edges splitting the kept weights of a CSR matrix into nearly equal parts."""
    rows = crow.numel() - 1
    targets = torch.linspace(0, int(crow[-1]), parts + 1, dtype=torch.float64)
    edges = torch.searchsorted(crow.to(torch.float64), targets).clamp_(0, rows).tolist()
    edges[0], edges[-1] = 0, rows
    return [int(e) for e in edges]


POOL_MIN_WORK = 10_000_000  # kept weights x tokens below which one thread is faster than the pool
TEAM_MIN_WORK = 1_000_000  # the same for torch's OpenMP team


class ThreadBounds:
    """Row edges of equal kept-weight parts, one per torch thread, cached until the CSR arrays or the
    thread count change. ``None`` (one part) for one thread, or for less work than
    :data:`TEAM_MIN_WORK` on torch's OpenMP team (a parallel region cost about 30 us on a 2-core VM:
    256x256 at 90%, 128 tokens, 0.84M, 0.079 ms on one thread, 0.094 on two; 768x768 at 95%, 3.8M,
    0.25 -> 0.19 ms; 3072x768 at 95%, 15M, 0.89 -> 0.52 ms), or :data:`POOL_MIN_WORK` on the Python
    pool: waking a pool thread took about 0.3 ms while torch's OpenMP threads spin after each op."""

    def __init__(self) -> None:
        self._key: tuple[int, int] | None = None
        self._nnz = 0
        self._edges: list[int] | None = None

    def get(self, crow: torch.Tensor, tokens: int) -> list[int] | None:
        threads = torch.get_num_threads()
        if threads <= 1:
            return None
        key = (crow.data_ptr(), threads)
        if self._key != key:  # the kept-weight count is read once, not on every call
            self._key, self._nnz, self._edges = key, int(crow[-1]), row_bounds(crow, threads)
        least = TEAM_MIN_WORK if in_openmp_team() else POOL_MIN_WORK
        return self._edges if self._nnz * tokens >= least else None


def column_edges(columns: int, parts: int) -> list[int]:
    """``parts + 1`` edges of nearly equal column ranges over ``range(columns)`` (empty ones where ``parts``
    is larger than ``columns``): part ``p`` is ``edges[p] <= c < edges[p + 1]``."""
    return [columns * p // parts for p in range(parts + 1)]


def column_split(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, in_features: int, parts: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The CSR arrays reordered for ``csr-numba/K``: ``parts`` column ranges of nearly equal width, one
    after the other, each in row order (``crow`` becomes ``(parts, rows + 1)``; ``col`` stays global).

    Example:
        >>> crow, col = torch.tensor([0, 2, 3], dtype=torch.int32), torch.tensor([0, 3, 2], dtype=torch.int32)
        >>> c2, col2, v2 = column_split(crow, col, torch.tensor([1.0, 2.0, 3.0]), 4, 2)
        >>> c2.tolist(), col2.tolist(), v2.tolist()
        ([[0, 1, 1], [1, 2, 3]], [0, 3, 2], [1.0, 2.0, 3.0])
    """
    rows = crow.numel() - 1
    row_of = torch.repeat_interleave(torch.arange(rows), (crow[1:] - crow[:-1]).long())
    edges = torch.tensor(column_edges(in_features, parts)[1:-1], dtype=col.dtype)
    part_of = torch.bucketize(col, edges, right=True)  # the p of column_edges
    order = torch.argsort(part_of.long() * (rows + 1) + row_of, stable=True)  # by part, then row (cols kept)
    counts = torch.bincount(part_of.long() * rows + row_of, minlength=parts * rows).view(parts, rows)
    split = torch.zeros(parts, rows + 1, dtype=torch.int64)
    if rows:
        ends = torch.cumsum(counts.reshape(-1), 0).view(parts, rows)  # end of each (part, row), in order
        split[:, 1:] = ends
        split[1:, 0] = ends[:-1, -1]  # a part starts where the previous one ends
    return split.to(torch.int32), col[order].contiguous(), values[order].contiguous()


def csr_mm(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, xt: torch.Tensor,
           bias: torch.Tensor | None, *, bounds: list[int] | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``W @ xt (+ bias[:, None])`` for the CSR ``W`` (int32 ``crow``/``col``) and ``xt`` (in, T) contiguous.

    ``crow`` is the plain ``(rows + 1,)`` or, for column parts, the ``(parts, rows + 1)`` of
    :func:`column_split` (its ``col`` and ``values`` with it). ``bounds`` are row edges
    (:func:`row_bounds` of the plain ``crow``) run in parallel, on torch's OpenMP team where
    :func:`in_openmp_team`, else on a Python thread pool; ``None``: one part on the calling thread.
    ``out``: a contiguous ``(rows, T)`` tensor to write into (else a new one).
    """
    crow2 = crow.view(1, -1) if crow.dim() == 1 else crow
    rows = crow2.shape[1] - 1
    if out is None:
        out = torch.empty(rows, xt.shape[1], dtype=values.dtype)
    b = bias if bias is not None else values.new_zeros(rows)
    fn = _compiled(values.dtype)
    args = (crow2.numpy(), col.numpy(), values.numpy(), xt.numpy(), b.numpy(), out.numpy())
    if bounds is None or len(bounds) <= 2:
        fn(*args, 0, rows)
        return out
    if in_openmp_team():
        _run_in_team(args, values.dtype, bounds)
        return out
    pool = _executor(len(bounds) - 2)
    futures = [pool.submit(fn, *args, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:], strict=False)]
    fn(*args, bounds[0], bounds[1])
    for f in futures:
        f.result()
    return out


__all__ = [
    "DTYPES",
    "TEAM_MIN_WORK",
    "ThreadBounds",
    "available",
    "column_edges",
    "column_split",
    "compile_for",
    "csr_mm",
    "in_openmp_team",
    "row_bounds",
    "supports",
    "version",
]
