"""Weight pruning: unstructured and N:M masks chosen by importance criteria, in bounded memory."""

from __future__ import annotations

from prunekit.weights.api import (
    SparsityReport,
    WeightPruningConfig,
    WeightPruningResult,
    parse_pattern,
    prune_weights,
    sparsity,
    sparsity_report,
)
from prunekit.weights.criteria import (
    Calibration,
    Snip,
    Taylor,
    Wanda,
    WeightCriterion,
    criterion_names,
    get_criterion,
    register_criterion,
)

__all__ = [
    "Calibration",
    "criterion_names",
    "get_criterion",
    "parse_pattern",
    "prune_weights",
    "register_criterion",
    "Snip",
    "sparsity",
    "sparsity_report",
    "SparsityReport",
    "Taylor",
    "Wanda",
    "WeightCriterion",
    "WeightPruningConfig",
    "WeightPruningResult",
]
