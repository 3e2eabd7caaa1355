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
from prunekit.structured.criteria import ChannelCriterion, get_criterion, reduce_members
from prunekit.structured.heads import NamedHeads, prune_heads
from prunekit.structured.layers import (
    LayerPruningResult,
    block_influence,
    find_blocks,
    prune_layers,
    skip_blocks,
)
from prunekit.structured.optim_state import reset_grad_accumulators, resize_optimizer
from prunekit.structured.surgery import apply_plan, get_tensor, masked_reference

__all__ = [
    "Activation",
    "apply_plan",
    "block_influence",
    "ChannelCriterion",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "find_blocks",
    "get_criterion",
    "get_tensor",
    "input_norms",
    "LayerPruningResult",
    "masked_reference",
    "ModelSummary",
    "NamedHeads",
    "prune_channels",
    "prune_heads",
    "prune_layers",
    "reduce_members",
    "reset_grad_accumulators",
    "resize_optimizer",
    "skip_blocks",
    "summary",
]
