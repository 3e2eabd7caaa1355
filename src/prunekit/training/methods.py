"""Training-time pruning methods built from schedules, masks and the training helper.

- :func:`iterative_prune`: prune a fraction, fine-tune, repeat (Han et al. 2015).
- :func:`one_shot_then_finetune`: prune once, fine-tune.
- :func:`lottery_ticket`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019).
"""

from __future__ import annotations

from prunekit.training.finetune import one_shot_then_finetune
from prunekit.training.iterative import iterative_prune
from prunekit.training.lottery import LotteryConfig, lottery_ticket
from prunekit.training.results import ResultsTable, RunResult

__all__ = [
    "LotteryConfig",
    "ResultsTable",
    "RunResult",
    "iterative_prune",
    "lottery_ticket",
    "one_shot_then_finetune",
]
