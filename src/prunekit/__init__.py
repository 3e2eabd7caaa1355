"""prunekit: prune PyTorch models so they really get smaller and faster.

Weight (unstructured and N:M) pruning, structured pruning that physically removes channels and
heads through a dependency graph, layer pruning, schedules during training, lottery tickets,
sensitivity analysis, and reports of what was gained.

The public API is flat (``pk.prune_weights``, ``pk.prune_channels``, ...) and loaded lazily: ``import
prunekit`` costs next to nothing on top of ``import torch``; each name imports its package on first use.
The packages behind it are listed in the README's "Architecture" section.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from prunekit import compat as compat
from prunekit.version import __version__ as __version__

# public name -> the package that exports it (each package's __init__ is its API)
_API: dict[str, str] = {
    **dict.fromkeys(
        [
            "ConfigError",
            "DataRequiredError",
            "FormatError",
            "UnknownModuleError",
            "UnknownModuleError",
            "PatternError",
            "PlanError",
            "PrunekitError",
            "UnsupportedOpError",
        ],
        "prunekit.errors",
    ),
    **dict.fromkeys(
        [
            "EvalResult",
            "HardwareInfo",
            "Registry",
            "UNSET",
            "config_from_dict",
            "config_to_dict",
            "criterion_registry",
            "LatencyResult",
            "evaluate",
            "forward_peak_memory",
            "hardware_info",
            "make_permanent",
            "measure_latency",
        ],
        "prunekit.core",
    ),
    **dict.fromkeys(
        ["CouplingContext", "register_coupling_rule", "unregister_coupling_rule"],
        "prunekit.graph",
    ),
    **dict.fromkeys(
        [
            "SparsityReport",
            "WeightCriterion",
            "WeightPruningConfig",
            "WeightPruningResult",
            "prune_weights",
            "register_criterion",
            "sparsity",
            "sparsity_report",
        ],
        "prunekit.weights",
    ),
    **dict.fromkeys(
        [
            "ChannelPruneConfig",
            "ChannelPruneResult",
            "LayerPruningConfig",
            "ExpertPruneConfig",
            "ExpertPruningResult",
            "HeadPruneConfig",
            "LayerPruningResult",
            "ModelSummary",
            "prune_channels",
            "prune_experts",
            "prune_heads",
            "prune_layers",
            "resize_optimizer",
            "summary",
        ],
        "prunekit.structured",
    ),
    **dict.fromkeys(
        ["information_limit_bits", "load", "save", "save_pretrained", "sync_hf_config"], "prunekit.io"
    ),
    **dict.fromkeys(
        [
            "AllocationConfig",
            "AllocationPlan",
            "LayerSensitivity",
            "SensitivityConfig",
            "SensitivityResult",
            "allocate",
            "apply_allocation",
            "layer_latency",
            "preview",
            "sensitivity",
        ],
        "prunekit.analysis",
    ),
    **dict.fromkeys(
        [
            "ChannelPruner",
            "ChannelPrunerConfig",
            "ConstantSchedule",
            "CubicSchedule",
            "IterativePruneConfig",
            "IterativeSchedule",
            "LotteryConfig",
            "FinetuneConfig",
            "Pruner",
            "PrunerConfig",
            "RegrowthConfig",
            "Schedule",
            "fit",
            "iterative_prune",
            "load_checkpoint",
            "lottery_ticket",
            "make_schedule",
            "one_shot_then_finetune",
            "save_checkpoint",
            "train_epoch",
        ],
        "prunekit.training",
    ),
    **dict.fromkeys(["Recipe", "RecipeResult"], "prunekit.recipes"),
    **dict.fromkeys(
        [
            "OneShotConfig",
            "OneShotResult",
            "StructuredOneShotConfig",
            "StructuredOneShotResult",
            "calibration_batches",
            "prune_checkpoint",
            "prune_oneshot",
            "prune_structured_oneshot",
        ],
        "prunekit.oneshot",
    ),
    **dict.fromkeys(
        [
            "AccelerationResult",
            "SpeedupWarning",
            "accelerate",
            "energy_estimate",
            "export_onnx",
            "speedup_estimate",
        ],
        "prunekit.accel",
    ),
}

__all__ = [
    "AccelerationResult",
    "AllocationConfig",
    "AllocationPlan",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "ChannelPruner",
    "ChannelPrunerConfig",
    "ConfigError",
    "ConstantSchedule",
    "CouplingContext",
    "CubicSchedule",
    "DataRequiredError",
    "EvalResult",
    "ExpertPruneConfig",
    "ExpertPruningResult",
    "FinetuneConfig",
    "FormatError",
    "HardwareInfo",
    "HeadPruneConfig",
    "IterativePruneConfig",
    "IterativeSchedule",
    "LatencyResult",
    "LayerPruningConfig",
    "LayerPruningResult",
    "LayerSensitivity",
    "LotteryConfig",
    "ModelSummary",
    "OneShotConfig",
    "OneShotResult",
    "PatternError",
    "PlanError",
    "PrunekitError",
    "Pruner",
    "PrunerConfig",
    "Recipe",
    "RecipeResult",
    "Registry",
    "RegrowthConfig",
    "Schedule",
    "SensitivityConfig",
    "SensitivityResult",
    "SparsityReport",
    "SpeedupWarning",
    "StructuredOneShotConfig",
    "StructuredOneShotResult",
    "UNSET",
    "UnknownModuleError",
    "UnsupportedOpError",
    "WeightCriterion",
    "WeightPruningConfig",
    "WeightPruningResult",
    "__version__",
    "accelerate",
    "allocate",
    "apply_allocation",
    "calibration_batches",
    "config_from_dict",
    "config_to_dict",
    "criterion_registry",
    "energy_estimate",
    "evaluate",
    "export_onnx",
    "fit",
    "forward_peak_memory",
    "hardware_info",
    "information_limit_bits",
    "iterative_prune",
    "layer_latency",
    "load",
    "load_checkpoint",
    "lottery_ticket",
    "make_permanent",
    "make_schedule",
    "measure_latency",
    "one_shot_then_finetune",
    "preview",
    "prune_channels",
    "prune_checkpoint",
    "prune_experts",
    "prune_heads",
    "prune_layers",
    "prune_oneshot",
    "prune_structured_oneshot",
    "prune_weights",
    "register_coupling_rule",
    "register_criterion",
    "resize_optimizer",
    "save",
    "save_checkpoint",
    "save_pretrained",
    "sensitivity",
    "sparsity",
    "sparsity_report",
    "speedup_estimate",
    "summary",
    "sync_hf_config",
    "train_epoch",
    "unregister_coupling_rule",
]

_PACKAGES = frozenset(
    [
        "accel",
        "analysis",
        "cli",
        "core",
        "errors",
        "graph",
        "integrations",
        "io",
        "kernels",
        "oneshot",
        "recipes",
        "report",
        "structured",
        "training",
        "weights",
    ]
)


def __getattr__(name: str) -> Any:
    package = _API.get(name)
    if package is not None:
        value = getattr(importlib.import_module(package), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _PACKAGES:  # pk.structured, pk.core, ...: the packages load on first use too
        return importlib.import_module(f"prunekit.{name}")
    return compat.deprecated_attribute(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = compat.Package


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time each name is imported on first use
    from prunekit.accel import (
        AccelerationResult,
        SpeedupWarning,
        accelerate,
        energy_estimate,
        export_onnx,
        speedup_estimate,
    )
    from prunekit.analysis import (
        AllocationConfig,
        AllocationPlan,
        LayerSensitivity,
        SensitivityConfig,
        SensitivityResult,
        allocate,
        apply_allocation,
        layer_latency,
        preview,
        sensitivity,
    )
    from prunekit.core import (
        UNSET,
        EvalResult,
        HardwareInfo,
        LatencyResult,
        Registry,
        config_from_dict,
        config_to_dict,
        criterion_registry,
        evaluate,
        forward_peak_memory,
        hardware_info,
        make_permanent,
        measure_latency,
    )
    from prunekit.errors import (
        ConfigError,
        DataRequiredError,
        FormatError,
        PatternError,
        PlanError,
        PrunekitError,
        UnknownModuleError,
        UnsupportedOpError,
    )
    from prunekit.graph import (
        CouplingContext,
        register_coupling_rule,
        unregister_coupling_rule,
    )
    from prunekit.io import (
        information_limit_bits,
        load,
        save,
        save_pretrained,
        sync_hf_config,
    )
    from prunekit.oneshot import (
        OneShotConfig,
        OneShotResult,
        StructuredOneShotConfig,
        StructuredOneShotResult,
        calibration_batches,
        prune_checkpoint,
        prune_oneshot,
        prune_structured_oneshot,
    )
    from prunekit.recipes import (
        Recipe,
        RecipeResult,
    )
    from prunekit.structured import (
        ChannelPruneConfig,
        ChannelPruneResult,
        ExpertPruneConfig,
        ExpertPruningResult,
        HeadPruneConfig,
        LayerPruningConfig,
        LayerPruningResult,
        ModelSummary,
        prune_channels,
        prune_experts,
        prune_heads,
        prune_layers,
        resize_optimizer,
        summary,
    )
    from prunekit.training import (
        ChannelPruner,
        ChannelPrunerConfig,
        ConstantSchedule,
        CubicSchedule,
        FinetuneConfig,
        IterativePruneConfig,
        IterativeSchedule,
        LotteryConfig,
        Pruner,
        PrunerConfig,
        RegrowthConfig,
        Schedule,
        fit,
        iterative_prune,
        load_checkpoint,
        lottery_ticket,
        make_schedule,
        one_shot_then_finetune,
        save_checkpoint,
        train_epoch,
    )
    from prunekit.weights import (
        SparsityReport,
        WeightCriterion,
        WeightPruningConfig,
        WeightPruningResult,
        prune_weights,
        register_criterion,
        sparsity,
        sparsity_report,
    )
