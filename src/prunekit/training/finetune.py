"""One-shot pruning followed by fine-tuning."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from prunekit.core import UNSET, ConfigMixin, LossFn, evaluate, merge_config, register_config
from prunekit.errors import ConfigError
from prunekit.training.common import OptimizerLike, check_optimizer, make_optimizer, weight_sparsity
from prunekit.training.loop import fit
from prunekit.training.results import ResultsTable, RunResult


@register_config
@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(ConfigMixin):
    """Every option of :func:`one_shot_then_finetune` (model, data, optimizer, loss are arguments).

    Attributes:
        sparsity: target sparsity (fraction of weights removed) in [0, 1).
        epochs: fine-tuning epochs (or give ``steps``).
        steps: fine-tuning steps (overrides ``epochs``).
        criterion: weight criterion name or object, passed to :func:`prunekit.prune_weights`.
        scope: ``"global"`` or ``"layer"``.
        include: module names/globs/types to prune.
        exclude: module names/globs/types to leave dense.
        eval_every: evaluate every this many fine-tuning steps (history rows in the table).
    """

    sparsity: float
    epochs: int | None = 1
    steps: int | None = None
    criterion: Any = "magnitude"
    scope: Literal["global", "layer"] = "global"
    include: Any = None
    exclude: Any = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ConfigError("one_shot_then_finetune needs epochs=... or steps=...")
        for name in ("include", "exclude"):
            if isinstance(getattr(self, name), (list, set)):
                object.__setattr__(self, name, tuple(getattr(self, name)))


def one_shot_then_finetune(
    model: nn.Module,
    train_loader: Any,
    *,
    sparsity: float = UNSET,
    optimizer: OptimizerLike,
    epochs: int | None = UNSET,
    steps: int | None = UNSET,
    criterion: Any = UNSET,
    scope: Literal["global", "layer"] = UNSET,
    include: Sequence[Any] | None = UNSET,
    exclude: Sequence[Any] | None = UNSET,
    data: Any = None,
    val_loader: Iterable[Any] | None = None,
    eval_every: int | None = UNSET,
    loss_fn: LossFn | None = None,
    checkpoint: str | Path | None = None,
    config: FinetuneConfig | None = None,
) -> RunResult:
    """Prune ``model`` in place to ``sparsity`` at once, then fine-tune it with the masks in force.

    Args:
        model: a trained model, pruned in place.
        train_loader: fine-tuning data.
        sparsity: target sparsity in [0, 1).
        optimizer: an optimizer over ``model.parameters()`` or a factory ``f(params)``.
        epochs: fine-tuning epochs (or give ``steps``).
        steps: fine-tuning steps (overrides ``epochs``).
        criterion, scope, include, exclude, data: passed to :func:`prunekit.prune_weights`
            (``data`` for data-aware criteria; ``loss_fn`` too).
        val_loader: evaluated before pruning, right after pruning and after fine-tuning.
        eval_every: evaluate every this many fine-tuning steps (history rows in the table).
        loss_fn: default cross-entropy.
        checkpoint: a checkpoint file making the fine-tuning resumable.
        config: a :class:`FinetuneConfig` holding every option above but the data, optimizer, loss and
            checkpoint; a keyword that sets the same option as ``config`` raises ``ConfigError``.

    Returns:
        A :class:`RunResult`; the table has rows ``dense``, ``pruned`` and ``finetuned``
        (plus ``step`` rows with ``eval_every``).
    """
    from prunekit.weights import prune_weights

    check_optimizer(optimizer)
    if config is None and sparsity is UNSET:
        raise ConfigError("one_shot_then_finetune needs sparsity= or config=")
    cfg = merge_config(
        FinetuneConfig,
        config,
        verb="one_shot_then_finetune",
        sparsity=sparsity,
        epochs=epochs,
        steps=steps,
        criterion=criterion,
        scope=scope,
        include=include,
        exclude=exclude,
        eval_every=eval_every,
    )
    sparsity, epochs, steps, eval_every = cfg.sparsity, cfg.epochs, cfg.steps, cfg.eval_every
    criterion, scope, include, exclude = cfg.criterion, cfg.scope, cfg.include, cfg.exclude
    table = ResultsTable("oneshot")
    if val_loader is not None:
        r = evaluate(model, val_loader, loss_fn)
        table.rows.append(
            {"stage": "dense", "step": 0, "sparsity": 0.0, "loss": r.loss, "accuracy": r.accuracy}
        )
    prune_weights(
        model,
        sparsity,
        criterion=criterion,
        scope=scope,
        include=include,
        exclude=exclude,
        data=data,
        loss_fn=loss_fn,
    )
    s = weight_sparsity(model)
    if val_loader is not None:
        r = evaluate(model, val_loader, loss_fn)
        table.rows.append(
            {"stage": "pruned", "step": 0, "sparsity": s, "loss": r.loss, "accuracy": r.accuracy}
        )
    opt = make_optimizer(optimizer, model)
    res = fit(
        model,
        opt,
        train_loader,
        epochs=epochs,
        steps=steps,
        loss_fn=loss_fn,
        val_loader=val_loader,
        eval_every=eval_every,
        checkpoint=checkpoint,
    )
    for h in res.history[:-1]:
        table.rows.append({"stage": "finetuning", "sparsity": s, **h})
    if res.final is not None:
        table.rows.append(
            {
                "stage": "finetuned",
                "step": res.steps,
                "sparsity": s,
                "loss": res.final.loss,
                "accuracy": res.final.accuracy,
            }
        )
    return RunResult(
        table=table,
        sparsity=weight_sparsity(model),
        accuracy=res.final.accuracy if res.final else None,
        loss=res.final.loss if res.final else None,
    )


__all__ = ["FinetuneConfig", "one_shot_then_finetune"]
