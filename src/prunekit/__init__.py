"""prunekit: prune PyTorch models so they really get smaller and faster.

Weight (unstructured and N:M) pruning, structured pruning that physically removes channels and
heads through a dependency graph, layer pruning, schedules during training, lottery tickets,
sensitivity analysis, and reports of what was gained.
"""

from __future__ import annotations

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
from prunekit.masks import make_permanent
from prunekit.weights import prune_weights, sparsity

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataRequiredError",
    "FormatError",
    "ModuleNotFound",
    "PatternError",
    "PlanError",
    "PrunekitError",
    "UnsupportedOpError",
    "__version__",
    "make_permanent",
    "prune_weights",
    "sparsity",
]
