"""Sensitivity analysis (per layer, channel or attention head), one-pass estimates, and per-layer
allocation of a global target from the measured curves."""

from __future__ import annotations

from prunekit.analysis.allocation import AllocationConfig, AllocationPlan, allocate
from prunekit.analysis.apply import apply_allocation, layer_latency
from prunekit.analysis.heads import head_units
from prunekit.analysis.layers import keep_mask, layer_macs
from prunekit.analysis.preview import Preview, preview
from prunekit.analysis.result import LayerSensitivity, SensitivityResult, spearman
from prunekit.analysis.sweep import SensitivityConfig, iter_curve, sensitivity

__all__ = [
    "allocate",
    "AllocationConfig",
    "AllocationPlan",
    "apply_allocation",
    "head_units",
    "iter_curve",
    "keep_mask",
    "layer_latency",
    "layer_macs",
    "LayerSensitivity",
    "Preview",
    "preview",
    "sensitivity",
    "SensitivityConfig",
    "SensitivityResult",
    "spearman",
]
