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

__version__ = "0.1.0"

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
            "LayerPruningResult",
            "ModelSummary",
            "prune_channels",
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
            "IterativeSchedule",
            "LotteryConfig",
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
}

__all__ = [
    "AllocationPlan",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "ChannelPruner",
    "ChannelPrunerConfig",
    "ConfigError",
    "ConstantSchedule",
    "CubicSchedule",
    "DataRequiredError",
    "EvalResult",
    "FormatError",
    "HardwareInfo",
    "IterativeSchedule",
    "LatencyResult",
    "LayerPruningResult",
    "LayerSensitivity",
    "LotteryConfig",
    "ModelSummary",
    "PatternError",
    "PlanError",
    "PrunekitError",
    "Pruner",
    "PrunerConfig",
    "Recipe",
    "RecipeResult",
    "RegrowthConfig",
    "Schedule",
    "SensitivityConfig",
    "SensitivityResult",
    "SparsityReport",
    "UnknownModuleError",
    "UnsupportedOpError",
    "WeightCriterion",
    "WeightPruningConfig",
    "WeightPruningResult",
    "__version__",
    "allocate",
    "apply_allocation",
    "evaluate",
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
    "prune_heads",
    "prune_layers",
    "prune_weights",
    "register_criterion",
    "resize_optimizer",
    "save",
    "save_checkpoint",
    "save_pretrained",
    "sensitivity",
    "sparsity",
    "sparsity_report",
    "summary",
    "sync_hf_config",
    "train_epoch",
]

_PACKAGES = frozenset(
    [
        "analysis",
        "cli",
        "core",
        "errors",
        "graph",
        "integrations",
        "io",
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
    from prunekit.analysis import (
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
        EvalResult,
        HardwareInfo,
        LatencyResult,
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
    from prunekit.io import information_limit_bits, load, save, save_pretrained, sync_hf_config
    from prunekit.recipes import Recipe, RecipeResult
    from prunekit.structured import (
        ChannelPruneConfig,
        ChannelPruneResult,
        LayerPruningResult,
        ModelSummary,
        prune_channels,
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
