"""A tiny shared training helper: ``train_epoch`` and a resumable ``fit`` (evaluation: :func:`prunekit.core.evaluate`).

Anything iterable of ``(inputs, targets)`` works as data (a plain ``DataLoader`` is the usual case).
``fit`` drives a :class:`~prunekit.training.pruner.Pruner` (one ``pruner.step()`` after each
``optimizer.step()``) and, given ``checkpoint=``, saves atomically every ``checkpoint_every`` steps and
resumes from the last checkpoint: a run killed at any point ends bit-identical to one that was not
(on the same machine and thread count), because the model, masks, optimizer, pruner, all RNG states
and the position inside the epoch are restored, and the epoch's batches are replayed from the
DataLoader's generator state at the start of that epoch.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core import (
    BatchLossFn,
    EvalResult,
    LossFn,
    call_model,
    evaluate,
    model_device,
    model_output,
    split_batch,
    to_device,
)
from prunekit.errors import ConfigError
from prunekit.training.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


class StepHook(Protocol):
    """Anything with ``step()`` and ``state_dict``/``load_state_dict`` (e.g. a Pruner)."""

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    """What :func:`fit` did: steps run, evaluation history and the final evaluation."""

    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    final: EvalResult | None = None

    @property
    def best(self) -> dict[str, float] | None:
        """The evaluation with the lowest validation loss (the early-stop point)."""
        return min(self.history, key=lambda h: h["loss"]) if self.history else None


def train_step(
    model: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None = None,
    pruner: StepHook | None = None,
    *,
    batch_loss: BatchLossFn | None = None,
) -> float:
    """One optimisation step: forward, backward, ``optimizer.step()``, then ``pruner.step()``.

    The loss is ``loss_fn(model(inputs), targets)`` (default cross-entropy on the scores), or, with
    ``batch_loss``, ``batch_loss(model, batch)``: the general form, which calls the model itself (a
    distillation teacher, masked tokens, ...) and needs no targets in the batch.
    """
    dev = model_device(model)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    if batch_loss is not None:
        _one_loss(loss_fn, batch_loss)
        loss = batch_loss(model, to_device(batch, dev))
    else:
        inputs, targets = split_batch(batch)
        out = call_model(model, to_device(inputs, dev))
        loss = (loss_fn or F.cross_entropy)(
            model_output(out) if loss_fn is None else out, to_device(targets, dev)
        )
    loss.backward()
    optimizer.step()
    if pruner is not None:
        pruner.step()
    return float(loss.detach())


def train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None = None,
    pruner: StepHook | None = None,
    max_steps: int | None = None,
    *,
    batch_loss: BatchLossFn | None = None,
) -> float:
    """Train for one pass over ``loader`` (or ``max_steps`` batches); return the mean training loss.

    ``batch_loss(model, batch)`` replaces ``loss_fn`` as in :func:`train_step`.
    """
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_steps is not None and i >= max_steps:
            break
        total += train_step(model, batch, optimizer, loss_fn, pruner, batch_loss=batch_loss)
        count += 1
    return total / max(count, 1)


def _loader_generator(loader: Any) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    if gen is None:
        sampler = getattr(loader, "sampler", None)
        gen = getattr(sampler, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    loss_fn: LossFn | None = None,
    pruner: StepHook | None = None,
    val_loader: Iterable[Any] | None = None,
    test_loader: Iterable[Any] | None = None,
    eval_every: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 100,
    on_step: Callable[[int], None] | None = None,
    batch_loss: BatchLossFn | None = None,
) -> FitResult:
    """Train ``model`` for ``epochs`` passes (or ``steps`` batches), optionally resumable.

    Args:
        model: the model (may be wrapped in DistributedDataParallel).
        optimizer: its optimizer.
        train_loader: a DataLoader (a seeded ``generator=`` makes resumption exact).
        epochs: number of passes over ``train_loader``; or give ``steps``.
        steps: total number of optimisation steps (overrides ``epochs``).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy.
        pruner: called once per step after ``optimizer.step()``; its state is checkpointed.
        val_loader: evaluated every ``eval_every`` steps and at the end (history of loss/accuracy).
        test_loader: also evaluated at those points (``test_accuracy`` in the history).
        eval_every: steps between evaluations (``None``: only at the end).
        checkpoint: path of a ``.safetensors`` checkpoint; resumed from if it exists.
        checkpoint_every: steps between checkpoint writes.
        on_step: called with the global step number after each step (progress, tests).
        batch_loss: the general loss ``batch_loss(model, batch) -> scalar`` instead of ``loss_fn``: it
            calls the model itself (e.g. distillation to a frozen teacher, the masked-LM loss of text
            batches without targets); the validation loss is then ``batch_loss`` too.

    Returns:
        A :class:`FitResult`.

    Raises:
        ConfigError: if neither ``epochs`` nor ``steps`` is given, ``checkpoint_every < 1``, or both
            ``loss_fn`` and ``batch_loss`` are given.
    """
    _one_loss(loss_fn, batch_loss)
    if steps is None:
        if epochs is None:
            raise ConfigError("fit needs epochs=... or steps=...")
        steps = epochs * len(train_loader)
    if steps < 0 or checkpoint_every < 1:
        raise ConfigError(f"steps must be >= 0 and checkpoint_every >= 1, got {steps} and {checkpoint_every}")
    gen = _loader_generator(train_loader)
    step, epoch, batch_idx = 0, 0, 0
    history: list[dict[str, float]] = []
    epoch_start: dict[str, torch.Tensor] = {}

    def _record(at: int) -> dict[str, float]:
        assert val_loader is not None
        r = _evaluate(model, val_loader, loss_fn, batch_loss)
        entry = {"step": at, "loss": r.loss, "accuracy": r.accuracy if r.accuracy is not None else math.nan}
        if test_loader is not None:
            test = _evaluate(model, test_loader, loss_fn, batch_loss).accuracy
            entry["test_accuracy"] = test if test is not None else math.nan
        return entry

    def snapshot_epoch_start() -> None:
        epoch_start["torch"] = torch.get_rng_state()
        if gen is not None:
            epoch_start["loader"] = gen.get_state()

    def save(done: bool = False, final: EvalResult | None = None) -> None:
        if checkpoint is None:
            return
        extra: dict[str, Any] = {"history": history}
        if final is not None:
            extra["final"] = final.to_dict()
        tensors = {f"epoch_start/{k}": v for k, v in epoch_start.items()}
        if pruner is not None:
            pstate = pruner.state_dict()
            extra["pruner"] = {k: v for k, v in pstate.items() if not isinstance(v, torch.Tensor)}
            tensors.update({f"pruner/{k}": v for k, v in pstate.items() if isinstance(v, torch.Tensor)})
        save_checkpoint(
            checkpoint,
            model=model,
            optimizer=optimizer,
            position={"step": step, "epoch": epoch, "batch": batch_idx, "done": done},
            generators=[gen] if gen is not None else [],
            extra=extra,
            extra_tensors=tensors,
        )

    resumed_batches = 0
    if checkpoint is not None and Path(checkpoint).exists():
        ck = load_checkpoint(checkpoint, model=model, optimizer=optimizer, generators=[gen] if gen else [])
        step, epoch, batch_idx = ck.position["step"], ck.position["epoch"], ck.position["batch"]
        history = list(ck.extra.get("history", []))
        tensors = ck.extra.get("tensors", {})
        if pruner is not None:
            pstate: dict[str, Any] = dict(ck.extra.get("pruner", {}))
            pstate.update({k[len("pruner/") :]: v for k, v in tensors.items() if k.startswith("pruner/")})
            pruner.load_state_dict(pstate)
        epoch_start = {
            k[len("epoch_start/") :]: v for k, v in tensors.items() if k.startswith("epoch_start/")
        }
        resumed_batches = batch_idx
        log.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, step, epoch, batch_idx)
        if ck.position.get("done"):  # do not evaluate again: that could draw from RNGs the run saved
            saved = ck.extra.get("final")
            final = eval_result_from_dict(saved) if saved else None
            return FitResult(steps=step, history=history, final=final)

    n_batches = len(train_loader)
    from prunekit.training.progress import StepLog

    progress = StepLog(log, "fit", steps)
    while step < steps:
        if resumed_batches:
            # replay this epoch's shuffle from its start, then put the current RNG state back
            # replaying fetches the skipped batches: keep every RNG a dataset may draw from untouched
            current = torch.get_rng_state()
            current_np, current_py = np.random.get_state(), random.getstate()
            current_loader = gen.get_state() if gen is not None else None
            torch.set_rng_state(epoch_start["torch"])
            if gen is not None and "loader" in epoch_start:
                gen.set_state(epoch_start["loader"])
            it = iter(train_loader)
            for _ in range(resumed_batches):
                next(it)
            torch.set_rng_state(current)
            np.random.set_state(current_np)
            random.setstate(current_py)
            if gen is not None and current_loader is not None and "loader" not in epoch_start:
                gen.set_state(current_loader)
            resumed_batches = 0
        else:
            snapshot_epoch_start()
            it = iter(train_loader)
            batch_idx = 0
        for batch in it:
            train_step(model, batch, optimizer, loss_fn, pruner, batch_loss=batch_loss)
            step += 1
            batch_idx += 1
            if on_step is not None:
                on_step(step)
            if val_loader is not None and eval_every and step % eval_every == 0:
                history.append(_record(step))
                progress.step(step, val_loss=float(history[-1]["loss"]))
            else:
                progress.step(step)
            if step >= steps:
                break
            if step % checkpoint_every == 0:
                save()
        if batch_idx >= n_batches:
            epoch += 1
            batch_idx = 0
    final = None
    if val_loader is not None:
        final = _evaluate(model, val_loader, loss_fn, batch_loss)
        if not history or history[-1]["step"] != step:
            history.append(_record(step))
    save(done=True, final=final)
    progress.done(f"validation loss {final.loss:.4g}" if final is not None else f"{step} steps")
    if any(math.isnan(h["loss"]) for h in history):
        log.warning("validation loss became NaN during fit")
    return FitResult(steps=step, history=history, final=final)


def _one_loss(loss_fn: LossFn | None, batch_loss: BatchLossFn | None) -> None:
    if loss_fn is not None and batch_loss is not None:
        raise ConfigError(
            "give loss_fn (outputs, targets) or batch_loss (model, batch), not both: batch_loss is the "
            "general form and computes the whole loss"
        )


def _evaluate(
    model: nn.Module, data: Iterable[Any], loss_fn: LossFn | None, batch_loss: BatchLossFn | None
) -> EvalResult:
    if batch_loss is not None:
        return evaluate(model, data, batch_loss=batch_loss)
    return evaluate(model, data, loss_fn)


def eval_result_from_dict(saved: dict[str, Any]) -> EvalResult:
    """An :class:`EvalResult` from a checkpoint's JSON (also the older ``n`` key)."""
    return EvalResult(
        loss=float(saved["loss"]),
        accuracy=saved.get("accuracy"),
        examples=int(saved.get("examples", saved.get("n", 0))),
        metric=saved.get("metric"),
    )


__all__ = ["FitResult", "fit", "train_epoch", "train_step"]
