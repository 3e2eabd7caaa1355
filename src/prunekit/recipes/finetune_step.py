"""The recipe's ``finetune:`` section: :func:`prunekit.training.fit` with the run's task loss.

.. code-block:: yaml

    finetune:
      epochs: 1              # a fraction runs part of an epoch
      lr: 0.0001
      optimizer: adamw       # adam | adamw | sgd
      loss: embedding        # default: the run's task (CLI --task, Python loss_fn=)
      distill: cosine        # embedding only: cosine | mse to the dense teacher's mean-pooled output

What each loss trains on (the batches of the run's data; from the CLI with ``--calibration FILE.txt``,
the file's lines tokenised with the model's tokenizer as ``(inputs, inputs)`` pairs)::

    classification   cross-entropy of the scores against the batch's labels (the default)
    embedding        distillation: the pruned model's mean-pooled output against a frozen copy of the model
                     taken before pruning (the dense teacher, run on the fly on the same batch)
    causal-lm        next-token cross-entropy on the text;  masked-lm: token reconstruction of the MLM head
    module:function  fn(model, batch) -> scalar tensor: the general form (CLI: --loss module:function;
                     a recipe naming code needs trust_code=True / --trust-code)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from prunekit.core import BatchLossFn, LossFn
from prunekit.errors import ConfigError
from prunekit.recipes.tasks import TASKS, EmbeddingLoss, task_loss


class Finetune(Protocol):
    """What this module reads of a recipe's :class:`~prunekit.recipes.steps.Finetune` section."""

    @property
    def epochs(self) -> float: ...
    @property
    def lr(self) -> float: ...
    @property
    def optimizer(self) -> str: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def loss(self) -> str | None: ...
    @property
    def distill(self) -> str: ...


def check_loss_name(name: str | None) -> str | None:
    """``name`` if it names a fine-tuning loss (a task or ``module:function``); raises ValueError if not."""
    if name is None or name in TASKS or (":" in name and all(name.split(":", 1))):
        return name
    raise ValueError(
        f"loss must be one of {', '.join(TASKS)}, or module:function (fn(model, batch) -> scalar)"
    )


@dataclass(frozen=True)
class FinetuneLoss:
    """What fine-tuning minimises: ``loss_fn(outputs, targets)`` (``None``: cross-entropy) or ``batch_loss``."""

    loss_fn: LossFn | None = None
    batch_loss: BatchLossFn | None = None


def prepare_losses(
    finetune: Finetune | None,
    model: nn.Module,
    run_loss: LossFn | None,
    batch_loss: BatchLossFn | None = None,
    *,
    trust_code: bool = False,
) -> tuple[LossFn | None, FinetuneLoss | None]:
    """The run's loss and the fine-tuning loss, decided before pruning (so a teacher is the dense model).

    ``run_loss`` is the run's task loss (``None``: classification); it stays the evaluation loss, except
    that a recipe asking for a label-free task with no run loss given evaluates with that task too.
    ``batch_loss`` (Python / ``--loss``) overrides the recipe's ``finetune.loss``.

    Raises:
        ConfigError: a ``module:function`` the recipe names without ``trust_code``, or that is not
            callable; ``distill: mse`` with a loss that is not the embedding distillation.
    """
    if finetune is None:
        if batch_loss is not None:
            raise ConfigError("a fine-tuning loss was given but the recipe has no 'finetune' section")
        return run_loss, None
    if batch_loss is not None:
        return run_loss, FinetuneLoss(batch_loss=batch_loss)
    name, distill = finetune.loss, finetune.distill
    if name is not None and ":" in name:
        if not trust_code:
            raise ConfigError(
                f"the recipe names the loss function {name!r}: prunekit does not import code named by a recipe "
                "unless you trust it; pass trust_code=True (CLI: --trust-code), or give it yourself "
                "(batch_loss= / --loss)"
            )
        return run_loss, FinetuneLoss(batch_loss=import_batch_loss(name))
    if name is None:
        loss = run_loss
    elif name == "embedding" and isinstance(run_loss, EmbeddingLoss):
        loss = run_loss  # the run already holds the dense teacher
    else:
        loss = task_loss(name, model, distance=distill)  # embedding: a frozen copy of the dense model now
        if run_loss is None:
            run_loss = loss
    if isinstance(loss, EmbeddingLoss):
        loss = loss.with_distance(distill)
    elif distill != "cosine":
        raise ConfigError(
            f"finetune.distill: {distill} applies to the embedding loss (distillation to the dense model); "
            "set finetune.loss: embedding (or --task embedding), or drop distill"
        )
    return run_loss, FinetuneLoss(loss_fn=loss)


def import_batch_loss(spec: str) -> BatchLossFn:
    """The function ``module:function`` (or ``file.py:function``): ``fn(model, batch) -> scalar tensor``.

    Raises:
        ConfigError: it cannot be imported or is not callable.
    """
    from prunekit.recipes.sources import import_object

    fn = import_object(spec, "loss function")
    if not callable(fn):
        raise ConfigError(f"loss {spec!r} is not callable; expected fn(model, batch) -> scalar tensor")
    return fn  # type: ignore[no-any-return]


def run_finetune(model: nn.Module, train: Iterable[Any], finetune: Finetune, loss: FinetuneLoss) -> int:
    """Fine-tune ``model`` in place with :func:`prunekit.training.fit`; returns the number of steps.

    ``finetune.epochs`` may be fractional (1.5 = one pass and half of the next, at least one batch).
    The masks of pruned weights stay in force (they are re-applied after every optimizer step).
    """
    from prunekit.training import fit, make_optimizer

    loader = train if hasattr(train, "__len__") else list(train)
    n = len(loader)  # type: ignore[arg-type]
    whole, frac = int(finetune.epochs), finetune.epochs - int(finetune.epochs)
    steps = whole * n + (max(1, round(frac * n)) if frac and n else 0)
    opt = make_optimizer(
        finetune.optimizer,
        [p for p in model.parameters() if p.requires_grad],
        finetune.lr,
        momentum=finetune.momentum,
        weight_decay=finetune.weight_decay,
    )
    result = fit(model, opt, loader, steps=steps, loss_fn=loss.loss_fn, batch_loss=loss.batch_loss)
    model.eval()
    return result.steps


__all__ = ["FinetuneLoss", "check_loss_name", "import_batch_loss", "prepare_losses", "run_finetune"]
