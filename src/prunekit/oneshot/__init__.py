"""One-shot pruning of transformers with calibration data (SparseGPT, Wanda, exact refit, OWL).

::

    config.py       OneShotConfig: every option, validated, to_dict/from_dict
    engine.py       blocks, block-0 input capture, per-layer statistics, propagation
    methods.py      per-layer masks and OBS reconstruction (magnitude, wanda, sparsegpt)
    refit.py        exact least-squares refit of the kept weights
    owl.py          outlier-weighted layer-wise sparsity
    driver.py       the block loop shared by in-memory and streamed pruning
    api.py          prune_oneshot
    streaming.py    prune_checkpoint: a checkpoint directory in, a pruned one out, block by block
    result.py       OneShotResult
    calibration.py  calibration_batches
    structured.py   prune_structured_oneshot: MLP channels / heads removed block by block, compensated
    structured_types.py  its config and result
    compensate.py   bias compensation and exact least-squares refit of a consuming layer
    budget.py       unit groups per block and a global params/MACs budget
"""

from __future__ import annotations

from prunekit.oneshot.api import prune_oneshot
from prunekit.oneshot.calibration import calibration_batches
from prunekit.oneshot.config import OneShotConfig
from prunekit.oneshot.result import OneShotLayer, OneShotResult
from prunekit.oneshot.streaming import prune_checkpoint
from prunekit.oneshot.structured import prune_structured_oneshot
from prunekit.oneshot.structured_types import (
    StructuredGroup,
    StructuredOneShotConfig,
    StructuredOneShotResult,
)

__all__ = [
    "calibration_batches",
    "OneShotConfig",
    "OneShotLayer",
    "OneShotResult",
    "prune_checkpoint",
    "prune_oneshot",
    "prune_structured_oneshot",
    "StructuredGroup",
    "StructuredOneShotConfig",
    "StructuredOneShotResult",
]
