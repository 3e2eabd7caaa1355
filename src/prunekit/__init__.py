"""prunekit: prune PyTorch models so they really get smaller and faster.

Weight (unstructured and N:M) pruning, structured pruning that physically removes channels and
heads through a dependency graph, layer pruning, schedules during training, lottery tickets,
sensitivity analysis, and reports of what was gained.
"""

from __future__ import annotations

from prunekit import schedules as schedules
from prunekit.allocate import AllocationPlan, allocate, apply_allocation, layer_latency
from prunekit.checkpoint import load_checkpoint, save_checkpoint
from prunekit.criteria import WeightCriterion, register_criterion
from prunekit.errors import (
    ConfigError,
    DataRequiredError,
    FormatError,
    ModuleNotFound,
    PatternError,
    PlanError,
    PrunekitError,
    UnsupportedOpError,
)
from prunekit.hf import save_pretrained, sync_hf_config
from prunekit.io import information_limit_bits, load, save
from prunekit.layers import LayerPruningResult, prune_layers
from prunekit.masks import make_permanent
from prunekit.methods import LotteryConfig, iterative_prune, lottery_ticket, one_shot_then_finetune
from prunekit.metrics import HardwareInfo, LatencyResult, forward_peak_memory, hardware_info, measure_latency
from prunekit.oneshot import (
    OneShotConfig,
    OneShotResult,
    calibration_batches,
    prune_checkpoint,
    prune_oneshot,
)
from prunekit.optim_state import resize_optimizer
from prunekit.pruner import ChannelPruner, ChannelPrunerConfig, Pruner, PrunerConfig, RegrowthConfig
from prunekit.recipes import Recipe, RecipeResult
from prunekit.schedules import ConstantSchedule, CubicSchedule, IterativeSchedule, Schedule, make_schedule
from prunekit.sensitivity import LayerSensitivity, SensitivityConfig, SensitivityResult, sensitivity
from prunekit.structured import (
    ChannelPruneConfig,
    ChannelPruneResult,
    ModelSummary,
    prune_channels,
    summary,
)
from prunekit.training import evaluate, fit, train_epoch
from prunekit.weights import (
    SparsityReport,
    WeightPruningConfig,
    WeightPruningResult,
    prune_weights,
    sparsity,
    sparsity_report,
)

__version__ = "0.1.0"

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
    "FormatError",
    "HardwareInfo",
    "IterativeSchedule",
    "LatencyResult",
    "LayerPruningResult",
    "LayerSensitivity",
    "LotteryConfig",
    "ModelSummary",
    "ModuleNotFound",
    "OneShotConfig",
    "OneShotResult",
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
    "UnsupportedOpError",
    "WeightCriterion",
    "WeightPruningConfig",
    "WeightPruningResult",
    "__version__",
    "allocate",
    "apply_allocation",
    "calibration_batches",
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
    "prune_channels",
    "prune_checkpoint",
    "prune_layers",
    "prune_oneshot",
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
