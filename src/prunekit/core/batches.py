"""Batches and evaluation, once for all of prunekit: split batches, move them, call the model, average the loss.

Inputs may be a tensor, a tuple of positional args or a dict of keyword args; targets may be
``None``. :func:`evaluate` runs in eval mode under ``torch.no_grad`` and restores the train/eval flags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, DataRequiredError

LossFn = Callable[[Any, Any], Any]
"""A loss: ``loss_fn(model_output, targets) -> scalar tensor`` (e.g. ``torch.nn.functional.cross_entropy``)."""

BatchLossFn = Callable[[nn.Module, Any], Any]
"""The general loss: ``batch_loss(model, batch) -> scalar tensor``; it calls the model itself (distillation,
masking, several forwards...). ``batch`` is what the data yields, moved to the model's device."""


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments, a tuple/list as positional ones."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_size(inputs: Any, targets: Any = None) -> int:
    """Number of examples in a batch: the length of the first tensor found."""
    for obj in (targets, inputs):
        if isinstance(obj, torch.Tensor) and obj.ndim > 0:
            return int(obj.shape[0])
        if isinstance(obj, Mapping):
            obj = list(obj.values())
        if isinstance(obj, (tuple, list)):
            for v in obj:
                if isinstance(v, torch.Tensor) and v.ndim > 0:
                    return int(v.shape[0])
    return 1


def take_batches(data: Any, max_batches: int | None, what: str) -> list[tuple[Any, Any]]:
    """The first ``max_batches`` ``(inputs, targets)`` pairs of ``data``, cached as a list."""
    if data is None:
        raise DataRequiredError(
            f"{what} needs validation data: pass data= as a DataLoader or any iterable of (inputs, targets)"
        )
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be a positive integer or None, got {max_batches}")
    batches: list[tuple[Any, Any]] = []
    for item in islice(iter(data), max_batches):
        try:
            batches.append(split_batch(item))
        except ConfigError as exc:
            raise ConfigError(
                f"{what}: {exc}. Wrap your data so it yields (inputs, targets); inputs may be a tensor, tuple or dict"
            ) from exc
    if not batches:
        raise DataRequiredError(
            f"{what}: data= yielded no batches; expected at least one (inputs, targets) pair"
        )
    return batches


def take_inputs(data: Any, max_batches: int | None, what: str) -> list[Any]:
    """The model inputs of the first ``max_batches`` batches of ``data`` (calibration: no targets needed).

    Batches may be bare inputs (a tensor, a dict, an HF batch), 1-tuples or ``(inputs, targets)`` pairs.
    """
    if data is None:
        raise DataRequiredError(
            f"{what} needs calibration data: pass data= as any iterable of model inputs (tensors, dicts, "
            "(inputs, targets) pairs or a DataLoader)"
        )
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be a positive integer or None, got {max_batches}")
    if isinstance(data, (torch.Tensor, Mapping)):
        data = [data]
    out = [inputs_only(item) for item in islice(iter(data), max_batches)]
    if not out:
        raise DataRequiredError(
            f"{what}: data= yielded no batches; expected at least one batch of model inputs"
        )
    return out


class EvalMode:
    """Put every module in eval mode and restore each module's own ``training`` flag on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in self.flags:
            m.training = flag


@dataclass(frozen=True)
class EvalResult:
    """Example-weighted mean loss over a dataset, with top-1 accuracy and a user metric where they apply.

    ``accuracy`` is ``None`` unless the outputs are class scores and the targets class indices;
    ``metric`` is ``None`` unless a metric was given.
    """

    loss: float
    accuracy: float | None
    examples: int
    metric: float | None = None

    @property
    def n(self) -> int:
        """Number of examples (the older name of :attr:`examples`)."""
        return self.examples

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "examples": self.examples,
            "metric": self.metric,
        }


def model_output(out: Any) -> Any:
    """The score tensor of a model output: the tensor itself, ``.logits``, or the first tensor of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def evaluate(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any] | None = None,
    *,
    metric: Callable[[Any, Any], Any] | None = None,
    max_batches: int | None = None,
    batch_loss: BatchLossFn | None = None,
) -> EvalResult:
    """Example-weighted mean loss (and accuracy / metric) of ``model`` over ``data``, without gradients.

    The one evaluation of prunekit: every verb, method, recipe and the command line use it. ``data`` yields
    ``(inputs, targets)`` pairs or dicts with ``labels`` (inputs: a tensor, a tuple of positional args or a
    dict of keyword args). Batches move to the model's device. Every module runs in eval mode and gets its
    own ``training`` flag back. ``loss_fn`` defaults to cross-entropy on the output's scores (``.logits``
    for Hugging Face outputs); a given ``loss_fn`` and ``metric`` receive the model's output as it is.
    ``batch_loss(model, batch)`` (instead of ``loss_fn``) is the general form: it gets the whole batch
    and calls the model itself; the batches then need no targets and no accuracy is computed.

    Raises:
        ConfigError: both ``loss_fn`` and ``batch_loss`` were given.
        DataRequiredError: ``data`` yielded no batch.
    """
    device = model_device(model)
    if batch_loss is not None:
        return _evaluate_batch_loss(model, data, batch_loss, loss_fn, metric, max_batches, device)
    scores = loss_fn is None
    loss = loss_fn or nn.functional.cross_entropy
    total = 0
    loss_sum = metric_sum = 0.0
    correct = 0
    classify = True
    with torch.no_grad(), EvalMode(model):
        for batch in islice(iter(data), max_batches):
            inputs, targets = split_batch(batch)
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            raw = call_model(model, inputs)
            out = model_output(raw)
            n = batch_size(inputs, targets)
            loss_sum += float(loss(out if scores else raw, targets)) * n
            if metric is not None:
                metric_sum += float(metric(raw, targets)) * n
            if (
                classify
                and isinstance(out, torch.Tensor)
                and isinstance(targets, torch.Tensor)
                and not targets.is_floating_point()
                and out.dim() >= 2
                and targets.shape == out.shape[:-1]
            ):
                correct += int((out.argmax(dim=-1) == targets).sum())
            else:
                classify = False
            total += n
    if total == 0:
        raise DataRequiredError("the evaluation data is empty; expected at least one (inputs, targets) batch")
    return EvalResult(
        loss=loss_sum / total,
        accuracy=correct / total if classify else None,
        examples=total,
        metric=metric_sum / total if metric is not None else None,
    )


def _evaluate_batch_loss(
    model: nn.Module,
    data: Iterable[Any],
    batch_loss: BatchLossFn,
    loss_fn: Any,
    metric: Any,
    max_batches: int | None,
    device: torch.device,
) -> EvalResult:
    if loss_fn is not None or metric is not None:
        raise ConfigError("give loss_fn (and metric) or batch_loss, not both")
    total, loss_sum = 0, 0.0
    with torch.no_grad(), EvalMode(model):
        for batch in islice(iter(data), max_batches):
            batch = to_device(batch, device)
            n = (
                batch_size(inputs_only(batch))
                if isinstance(batch, (Mapping, tuple, list))
                else batch_size(batch)
            )
            loss_sum += float(batch_loss(model, batch)) * n
            total += n
    if total == 0:
        raise DataRequiredError("the evaluation data is empty; expected at least one batch")
    return EvalResult(loss=loss_sum / total, accuracy=None, examples=total, metric=None)


def loss_and_metric(result: EvalResult) -> tuple[float, float | None]:
    """``(loss, metric)`` of an evaluation, as the sensitivity curves store them."""
    return result.loss, result.metric


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a batch given as a pair or a dict with ``labels``.

    Raises:
        ConfigError: the batch carries no targets (a bare tensor, a 1-tuple, a dict without ``labels``).
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ConfigError(
                "a batch without targets was given where targets are needed: yield (inputs, targets) pairs "
                "or dicts with 'labels'"
            )
        rest = dict(batch)
        return rest, rest.pop("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ConfigError(
        f"a data batch must be an (inputs, targets) pair or a dict with 'labels'; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def inputs_only(batch: Any) -> Any:
    """The model inputs of a batch that may or may not carry targets (calibration data).

    Accepts a tensor, a dict of tensors or an HF ``BatchEncoding`` (``labels`` dropped), an
    ``(inputs, targets)`` pair or a 1-tuple (as a ``DataLoader(TensorDataset(x))`` yields).
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0]
    raise ConfigError(
        f"cannot read model inputs from a batch of type {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "; expected a tensor, a dict of tensors, a 1-tuple or an (inputs, targets) pair"
    )


def weight_of(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to prune")
    return weight


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
