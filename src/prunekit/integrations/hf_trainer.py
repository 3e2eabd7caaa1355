"""Hugging Face ``transformers.Trainer`` callback driving a :class:`prunekit.Pruner` (install the ``hf`` extra).

Example::

    import prunekit as pk
    from prunekit.integrations.hf_trainer import PrunerTrainerCallback

    cfg = pk.PrunerConfig(schedule=pk.CubicSchedule(final_sparsity=0.5, start_step=0, end_step=500, frequency=50),
                          include=("*.intermediate.dense", "*.output.dense"))
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[PrunerTrainerCallback(cfg)])
    trainer.train()

The pruner is built in ``on_train_begin`` on the Trainer's model and optimizer, and steps in
``on_optimizer_step`` (after ``optimizer.step()``, before gradients are zeroed, so RigL sees them).
"""

from __future__ import annotations

from typing import Any

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "prunekit.integrations.hf_trainer needs transformers: pip install 'prunekit[hf]'"
    ) from e

from prunekit.training import Pruner, PrunerConfig


class PrunerTrainerCallback(TrainerCallback):
    """Prune a Hugging Face model during ``Trainer.train()`` on a schedule (and optionally regrow).

    Args:
        config: the :class:`~prunekit.PrunerConfig`.

    Attributes:
        pruner: the :class:`~prunekit.Pruner` (``None`` before training starts).
        history: ``(optimizer step, target sparsity, achieved mask sparsity)`` after every pruner step.
    """

    def __init__(self, config: PrunerConfig) -> None:
        self.config = config
        self.pruner: Pruner | None = None
        self.history: list[tuple[int, float, float]] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ValueError("PrunerTrainerCallback needs the Trainer to pass model= to its callbacks")
        self.pruner = Pruner(model, self.config, optimizer=kwargs.get("optimizer"))
        self.pruner.step_count = state.global_step  # resuming from a Trainer checkpoint

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.pruner is None:
            return
        target = self.pruner.step()
        self.history.append((self.pruner.step_count, target, self.pruner.sparsity()))


__all__ = ["PrunerTrainerCallback"]
