"""Iterative pruning (Han et al. 2015): prune a fraction, fine-tune, repeat until the target sparsity."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from prunekit.compat import renamed_kwargs
from prunekit.core import UNSET, ConfigMixin, LossFn, evaluate, merge_config, register_config
from prunekit.errors import ConfigError
from prunekit.training.common import OptimizerLike, check_optimizer, make_optimizer, weight_sparsity
from prunekit.training.loop import fit
from prunekit.training.results import ResultsTable, RunResult
from prunekit.training.schedules import IterativeSchedule

log = logging.getLogger(__name__)


@register_config
@dataclass(frozen=True, kw_only=True)
class IterativePruneConfig(ConfigMixin):
    """Every option of :func:`iterative_prune` (model, data, optimizer and loss are arguments of the verb).

    Attributes:
        sparsity: final sparsity (fraction of weights removed) in [0, 1) (was ``target``).
        rate: fraction of surviving weights removed per round.
        epochs_per_round: fine-tuning epochs per round (or give ``steps_per_round``).
        steps_per_round: fine-tuning steps per round (overrides ``epochs_per_round``).
        criterion: weight criterion name or object, passed to :func:`prunekit.prune_weights`.
        scope: ``"global"`` or ``"layer"``.
        include: module names/globs/types to prune.
        exclude: module names/globs/types to leave dense.
    """

    sparsity: float
    rate: float = 0.5
    epochs_per_round: int | None = 1
    steps_per_round: int | None = None
    criterion: Any = "magnitude"
    scope: Literal["global", "layer"] = "global"
    include: Any = None
    exclude: Any = None

    def __post_init__(self) -> None:
        IterativeSchedule(final_sparsity=self.sparsity, rate=self.rate, every=1)  # validates both
        if self.steps_per_round is None and self.epochs_per_round is None:
            raise ConfigError("iterative_prune needs epochs_per_round=... or steps_per_round=...")
        for name in ("include", "exclude"):
            if isinstance(getattr(self, name), (list, set)):
                object.__setattr__(self, name, tuple(getattr(self, name)))


@renamed_kwargs(target="sparsity")
def iterative_prune(
    model: nn.Module,
    train_loader: Any,
    *,
    sparsity: float = UNSET,
    rate: float = UNSET,
    optimizer: OptimizerLike,
    epochs_per_round: int | None = UNSET,
    steps_per_round: int | None = UNSET,
    criterion: Any = UNSET,
    scope: Literal["global", "layer"] = UNSET,
    include: Sequence[Any] | None = UNSET,
    exclude: Sequence[Any] | None = UNSET,
    val_loader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    checkpoint_dir: str | Path | None = None,
    config: IterativePruneConfig | None = None,
) -> RunResult:
    """Prune ``model`` in place in rounds: remove ``rate`` of the surviving weights, fine-tune, repeat.

    The sparsity after round ``k`` is ``min(target, 1 - (1 - rate) ** k)`` (an
    :class:`~prunekit.training.schedules.IterativeSchedule`). Start from a trained model.

    Args:
        model: a trained model, pruned in place.
        train_loader: fine-tuning data.
        sparsity: final sparsity in [0, 1) (``target=`` is the deprecated spelling).
        rate: fraction of surviving weights removed per round.
        optimizer: an optimizer (kept across rounds) or a factory ``f(params)`` (fresh each round).
        epochs_per_round: fine-tuning epochs per round (or give ``steps_per_round``).
        steps_per_round: fine-tuning steps per round (overrides ``epochs_per_round``).
        criterion, scope, include, exclude: passed to :func:`prunekit.prune_weights`.
        val_loader: evaluated before pruning (round 0) and after each round.
        loss_fn: default cross-entropy.
        checkpoint_dir: makes the run resumable (one checkpoint per round).
        config: an :class:`IterativePruneConfig` holding every option above; a keyword that sets the
            same option as ``config`` raises ``ConfigError``.

    Returns:
        A :class:`RunResult` whose table has one row per round: round, sparsity, loss, accuracy.

    Raises:
        ConfigError: for a bad target/rate or no fine-tuning length.
    """
    from prunekit.weights import prune_weights

    check_optimizer(optimizer)
    if config is None and sparsity is UNSET:
        raise ConfigError("iterative_prune needs sparsity= (the final sparsity) or config=")
    cfg = merge_config(
        IterativePruneConfig,
        config,
        verb="iterative_prune",
        sparsity=sparsity,
        rate=rate,
        epochs_per_round=epochs_per_round,
        steps_per_round=steps_per_round,
        criterion=criterion,
        scope=scope,
        include=include,
        exclude=exclude,
    )
    epochs_per_round, steps_per_round = cfg.epochs_per_round, cfg.steps_per_round
    criterion, scope, include, exclude = cfg.criterion, cfg.scope, cfg.include, cfg.exclude
    schedule = IterativeSchedule(final_sparsity=cfg.sparsity, rate=cfg.rate, every=1)
    steps = steps_per_round if steps_per_round is not None else epochs_per_round * len(train_loader)  # type: ignore[operator]
    table = ResultsTable("iterative")
    if val_loader is not None:
        r = evaluate(model, val_loader, loss_fn)
        table.rows.append({"round": 0, "sparsity": 0.0, "loss": r.loss, "accuracy": r.accuracy})
    final = None
    from prunekit.training.progress import StepLog

    progress = StepLog(
        log, f"iterative_prune to {cfg.sparsity:.1%}", schedule.rounds, unit="round", min_seconds=0
    )
    for k in range(schedule.rounds):
        sparsity = schedule.sparsity(k)
        prune_weights(model, sparsity, criterion=criterion, scope=scope, include=include, exclude=exclude)
        opt = make_optimizer(optimizer, model)
        ckpt = Path(checkpoint_dir) / f"round-{k + 1:03d}.safetensors" if checkpoint_dir is not None else None
        res = fit(
            model, opt, train_loader, steps=steps, loss_fn=loss_fn, val_loader=val_loader, checkpoint=ckpt
        )
        final = res.final
        row: dict[str, Any] = {"round": k + 1, "sparsity": weight_sparsity(model), "target": sparsity}
        if final is not None:
            row.update(loss=final.loss, accuracy=final.accuracy)
        table.rows.append(row)
        progress.step(
            k + 1, sparsity=float(row["sparsity"]), **({"loss": float(final.loss)} if final else {})
        )
    progress.done(f"sparsity {weight_sparsity(model):.1%}")
    return RunResult(
        table=table,
        sparsity=weight_sparsity(model),
        accuracy=final.accuracy if final else None,
        loss=final.loss if final else None,
    )


__all__ = ["IterativePruneConfig", "iterative_prune"]
