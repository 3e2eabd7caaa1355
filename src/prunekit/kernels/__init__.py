"""Sparse kernels and their measured speed on this machine (below the pruning verbs, so they can advise).

- :mod:`~prunekit.kernels.kernels`: ``SparseLinear`` (dense / CSR / BSR / compact) for inference.
- :mod:`~prunekit.kernels.jit`: the ``csr-numba`` kernel (optional numba); ``numba_available()``.
- :mod:`~prunekit.kernels.conv`: ``SparseConv2d`` (dense / CSR via im2col / compact) for inference.
- :mod:`~prunekit.kernels.table`: the per-machine kernel table (measured once, cached).
- :mod:`~prunekit.kernels.advice`: ``SpeedupWarning`` when a pruning cannot be faster here.
- :mod:`~prunekit.kernels.plan`: acceleration choices as data; :mod:`~prunekit.kernels.timing`: timers.
"""

from __future__ import annotations

from prunekit.kernels.advice import (
    SpeedupAdvice,
    SpeedupWarning,
    advise,
    warn_if_no_speedup,
)
from prunekit.kernels.conv import (
    ConvGeometry,
    SparseConv2d,
    conv_candidate_kernels,
    parse_conv_kernel,
)
from prunekit.kernels.jit import available as numba_available
from prunekit.kernels.kernels import (
    InferenceOnlyError,
    SparseLinear,
    block_fill,
    candidate_kernels,
    parse_kernel,
)
from prunekit.kernels.plan import (
    AccelerationResult,
    LayerChoice,
    attach_plan,
    attached_plan,
    fingerprint,
)
from prunekit.kernels.table import (
    KernelTable,
    cached_table,
    kernel_table,
    measure_table,
    save_table,
    table_path,
)
from prunekit.kernels.timing import (
    calls_per_burst,
    fresh_inputs,
    interleaved_ms,
    num_threads,
)

__all__ = [
    "AccelerationResult",
    "advise",
    "attach_plan",
    "attached_plan",
    "block_fill",
    "cached_table",
    "calls_per_burst",
    "candidate_kernels",
    "conv_candidate_kernels",
    "ConvGeometry",
    "fingerprint",
    "fresh_inputs",
    "InferenceOnlyError",
    "interleaved_ms",
    "kernel_table",
    "KernelTable",
    "LayerChoice",
    "measure_table",
    "num_threads",
    "numba_available",
    "parse_conv_kernel",
    "parse_kernel",
    "save_table",
    "SparseConv2d",
    "SparseLinear",
    "SpeedupAdvice",
    "SpeedupWarning",
    "table_path",
    "warn_if_no_speedup",
]
