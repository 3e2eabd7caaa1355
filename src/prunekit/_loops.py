"""Small train / evaluate loops shared by the demo, recipes and the command line.

Kept private on purpose: the public training-time API (``Pruner``, ``iterative_prune`` ...) lives
elsewhere; these loops only need to be correct, seeded and quiet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, FormatError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = ("adam", "adamw", "sgd")


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


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and top-1 accuracy (``None`` when the outputs are not class scores)."""

    loss: float
    accuracy: float | None
    examples: int


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a batch given as a pair/list or a dict with ``labels``."""
    if isinstance(batch, dict):
        batch = dict(batch)
        targets = batch.pop("labels", None)
        return batch, targets
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise FormatError(
        f"a data batch must be an (inputs, targets) pair or a dict with 'labels'; got {type(batch).__name__}"
    )


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``model`` on a tensor, a tuple or a kwargs dict and return a logits tensor."""
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        out = model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
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
    for limit in plan:
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            inputs, targets = split_batch(batch)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(model, inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            last = float(loss.detach())
            if on_batch is not None:
                on_batch()
    model.eval()
    return last


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any], loss_fn: LossFn | None = None) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``loader`` (eval mode; the mode is restored)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    count = 0
    classify = True
    try:
        for batch in loader:
            inputs, targets = split_batch(batch)
            out = forward(model, inputs)
            n = int(targets.shape[0]) if isinstance(targets, torch.Tensor) and targets.dim() else 1
            total_loss += float(loss_fn(out, targets)) * n
            if (
                classify
                and isinstance(targets, torch.Tensor)
                and not targets.is_floating_point()
                and out.dim() >= 2
            ):
                correct += int((out.argmax(dim=-1) == targets).sum())
            else:
                classify = False
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise FormatError("the evaluation data is empty; expected at least one (inputs, targets) batch")
    return EvalResult(loss=total_loss / count, accuracy=correct / count if classify else None, examples=count)


__all__ = ["EvalResult", "evaluate", "forward", "make_optimizer", "num_threads", "split_batch", "train"]
