"""Pruning during and around training: loops, schedules, pruners, checkpoints and the methods built on
them (iterative, one-shot + fine-tune, lottery tickets)."""

from __future__ import annotations

from prunekit.training.basic import forward, make_optimizer, num_threads, train
from prunekit.training.channel_pruner import ChannelPruner, ChannelPrunerConfig
from prunekit.training.checkpoint import atomic_save_tensors, load_checkpoint, load_tensors, save_checkpoint
from prunekit.training.finetune import FinetuneConfig, one_shot_then_finetune
from prunekit.training.iterative import IterativePruneConfig, iterative_prune
from prunekit.training.loop import FitResult, fit, train_epoch, train_step
from prunekit.training.lottery import LotteryConfig, lottery_ticket
from prunekit.training.pruner import (
    Pruner,
    PrunerConfig,
    RegrowthConfig,
    broadcast_masks,
    mask_sparsity,
)
from prunekit.training.results import ResultsTable, RunResult
from prunekit.training.schedules import (
    ConstantSchedule,
    CubicSchedule,
    IterativeSchedule,
    Schedule,
    make_schedule,
    schedule_from_dict,
)

__all__ = [
    "atomic_save_tensors",
    "broadcast_masks",
    "ChannelPruner",
    "ChannelPrunerConfig",
    "ConstantSchedule",
    "CubicSchedule",
    "FinetuneConfig",
    "fit",
    "FitResult",
    "forward",
    "iterative_prune",
    "IterativePruneConfig",
    "IterativeSchedule",
    "load_checkpoint",
    "load_tensors",
    "lottery_ticket",
    "LotteryConfig",
    "make_optimizer",
    "make_schedule",
    "mask_sparsity",
    "num_threads",
    "one_shot_then_finetune",
    "Pruner",
    "PrunerConfig",
    "RegrowthConfig",
    "ResultsTable",
    "RunResult",
    "save_checkpoint",
    "Schedule",
    "schedule_from_dict",
    "train",
    "train_epoch",
    "train_step",
]
