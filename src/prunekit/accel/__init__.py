"""Acceleration: run pruned models fast where the hardware allows, and say so where it does not.

accelerate(model, example_inputs)      measured per-layer kernel (dense / CSR / BSR / compact), Linear and Conv2d
save / load                            the masked model + the plan as data, re-measured elsewhere
kernel_table() / speedup_estimate()    a measured table per machine; latency of a pruning option
warn_if_no_speedup / SpeedupWarning    advice when the pruning asked for cannot be faster here
export_onnx / prune_and_quantize       deployable artifacts (ONNX + onnxruntime, int8)
energy_estimate / model_state_report   numbers per model state for the report
"""

from __future__ import annotations

from prunekit.accel.deploy import (
    OnnxModel,
    PruneQuantizeConfig,
    export_onnx,
    export_program,
    prune_and_quantize,
)
from prunekit.accel.energy import EnergyCosts, EnergyEstimate, energy_estimate
from prunekit.accel.engine import (
    AccelerateConfig,
    AccelerationError,
    LayerCase,
    accelerate,
    deaccelerate,
)
from prunekit.accel.estimate import LayerEstimate, SpeedupEstimate, speedup_estimate
from prunekit.accel.persist import load, read_plan, save
from prunekit.accel.states import deployment_states, model_state_report, model_states
from prunekit.kernels import (
    AccelerationResult,
    InferenceOnlyError,
    KernelTable,
    LayerChoice,
    SparseConv2d,
    SparseLinear,
    SpeedupAdvice,
    SpeedupWarning,
    advise,
    kernel_table,
    measure_table,
    warn_if_no_speedup,
)

__all__ = [
    "accelerate",
    "AccelerateConfig",
    "AccelerationError",
    "AccelerationResult",
    "advise",
    "deaccelerate",
    "deployment_states",
    "energy_estimate",
    "EnergyCosts",
    "EnergyEstimate",
    "export_onnx",
    "export_program",
    "InferenceOnlyError",
    "kernel_table",
    "KernelTable",
    "LayerCase",
    "LayerChoice",
    "LayerEstimate",
    "load",
    "measure_table",
    "model_state_report",
    "model_states",
    "OnnxModel",
    "prune_and_quantize",
    "PruneQuantizeConfig",
    "read_plan",
    "save",
    "SparseConv2d",
    "SparseLinear",
    "speedup_estimate",
    "SpeedupAdvice",
    "SpeedupEstimate",
    "SpeedupWarning",
    "warn_if_no_speedup",
]
