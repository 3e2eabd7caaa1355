"""A small named-optimizer training loop for the demo, recipes and the command line.

The public training-time API (``fit``, ``Pruner``, ``iterative_prune`` ...) lives beside it; this loop only
needs to be correct, seeded and quiet. Evaluation is :func:`prunekit.core.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prunekit.core import LossFn, call_model, model_output, split_batch
from prunekit.errors import ConfigError, FormatError

OPTIMIZERS = ("adam", "adamw", "sgd")

log = logging.getLogger(__name__)


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads inside the block (``None``: leave as is); the old value is restored."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``model`` on a tensor, a tuple or a kwargs dict and return its score tensor (``.logits``)."""
    out = model_output(call_model(model, inputs))
    if isinstance(out, torch.Tensor):
        return out
    raise FormatError(f"the model returned {type(out).__name__}; expected a tensor of scores (or .logits)")


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, **kw: float
) -> torch.optim.Optimizer:
    """An optimizer by name (``adam``, ``adamw`` or ``sgd``)."""
    momentum = kw.get("momentum", 0.9)
    weight_decay = kw.get("weight_decay", 0.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def train(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    epochs: float,
    lr: float,
    optimizer: str = "adam",
    loss_fn: LossFn | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    on_batch: Callable[[], None] | None = None,
) -> float:
    """Train ``model`` in place for ``epochs`` (a fraction runs part of an epoch); return the last loss."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = make_optimizer(
        optimizer,
        [p for p in model.parameters() if p.requires_grad],
        lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    model.train()
    last = float("nan")
    n_batches = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    whole, frac = int(epochs), epochs - int(epochs)
    plan = [None] * whole + ([max(1, int(round(frac * n_batches)))] if frac and n_batches else [])
    from prunekit.training.progress import StepLog

    progress = StepLog(log, f"train {epochs:g} epochs", len(plan), unit="epoch", min_seconds=2.0)
    for epoch, limit in enumerate(plan, 1):
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            inputs, targets = split_batch(batch)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(model, inputs), targets)
            loss.backward()
            opt.step()
            last = float(loss.detach())
            if on_batch is not None:
                on_batch()
        progress.step(epoch, loss=last)
    progress.done(f"last loss {last:.4g}")
    model.eval()
    return last


__all__ = ["forward", "make_optimizer", "num_threads", "train"]
