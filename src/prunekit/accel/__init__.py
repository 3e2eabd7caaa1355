"""Acceleration: run pruned models fast where the hardware allows, and say so where it does not.

accelerate(model, example_inputs)   measured per-layer kernel choice (dense / CSR / BSR / compact)
save / load                         the masked model + the plan as data, re-measured elsewhere
"""

from __future__ import annotations

from prunekit.accel.accelerate import (
    AccelerateConfig,
    AccelerationError,
    LayerCase,
    accelerate,
    deaccelerate,
)
from prunekit.accel.kernels import InferenceOnlyError, SparseLinear
from prunekit.accel.plan import AccelerationResult, LayerChoice

__all__ = [
    "AccelerateConfig",
    "AccelerationError",
    "AccelerationResult",
    "InferenceOnlyError",
    "LayerCase",
    "LayerChoice",
    "SparseLinear",
    "accelerate",
    "deaccelerate",
]
