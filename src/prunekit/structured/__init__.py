"""Structured pruning: physically remove channels, neurons, heads and whole layers.

select (criteria, ratios, targets) -> plan (data) -> surgery (slice in place) -> check (pruned == masked original).
"""

from __future__ import annotations

from prunekit.structured.activation import Activation, input_norms
from prunekit.structured.api import (
    ChannelPruneConfig,
    ChannelPruneResult,
    ModelSummary,
    prune_channels,
    summary,
)
from prunekit.structured.blocks import block_influence, find_blocks, skip_blocks
from prunekit.structured.criteria import ChannelCriterion, get_criterion, reduce_members
from prunekit.structured.experts import (
    ExpertPruneConfig,
    ExpertPruningResult,
    prune_experts,
    sync_expert_config,
)
from prunekit.structured.heads import HeadPruneConfig, NamedHeads, prune_heads
from prunekit.structured.layers import LayerPruningConfig, LayerPruningResult, prune_layers
from prunekit.structured.optim_state import reset_grad_accumulators, resize_optimizer
from prunekit.structured.surgery import (
    AttrUpdate,
    Plan,
    PlanEntry,
    apply_plan,
    get_tensor,
    masked_reference,
    record_plan,
)
from prunekit.structured.surgery import apply as apply_surgery

__all__ = [
    "Activation",
    "apply_plan",
    "apply_surgery",
    "AttrUpdate",
    "block_influence",
    "ChannelCriterion",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "ExpertPruneConfig",
    "ExpertPruningResult",
    "find_blocks",
    "get_criterion",
    "get_tensor",
    "HeadPruneConfig",
    "input_norms",
    "LayerPruningConfig",
    "LayerPruningResult",
    "masked_reference",
    "ModelSummary",
    "NamedHeads",
    "Plan",
    "PlanEntry",
    "prune_channels",
    "prune_experts",
    "prune_heads",
    "prune_layers",
    "record_plan",
    "reduce_members",
    "reset_grad_accumulators",
    "resize_optimizer",
    "skip_blocks",
    "summary",
    "sync_expert_config",
]
