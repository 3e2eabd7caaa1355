"""PyTorch Lightning callback driving a :class:`prunekit.Pruner` (install the ``lightning`` extra).

Example::

    import lightning as L, prunekit as pk
    from prunekit.integrations.lightning import PrunerCallback

    cfg = pk.PrunerConfig(schedule=pk.CubicSchedule(final_sparsity=0.9, start_step=100, end_step=2000, frequency=100))
    trainer = L.Trainer(max_steps=3000, callbacks=[PrunerCallback(cfg)])
    trainer.fit(lit_module, datamodule)

The pruner is built at the start of training on ``trainer.optimizers[0]`` and steps once per
optimizer step (``trainer.global_step`` advancing; gradient accumulation is respected), after the
step and before gradients are zeroed, so RigL sees the gradients. Its position is saved in
Lightning checkpoints through the callback's ``state_dict``; the masks are buffers of the module.
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "prunekit.integrations.lightning needs PyTorch Lightning: pip install 'prunekit[lightning]'"
    ) from e

from prunekit.training import Pruner, PrunerConfig


class PrunerCallback(pl.Callback):
    """Prune the LightningModule during ``trainer.fit`` on a schedule (and optionally regrow).

    Args:
        config: the :class:`~prunekit.PrunerConfig`.

    Attributes:
        pruner: the :class:`~prunekit.Pruner` (``None`` before training starts).
        history: ``(global_step, target sparsity, achieved mask sparsity)`` after every pruner step.
    """

    def __init__(self, config: PrunerConfig) -> None:
        super().__init__()
        self.config = config
        self.pruner: Pruner | None = None
        self.history: list[tuple[int, float, float]] = []
        self._last_global_step = 0
        self._pending_state: dict[str, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.pruner = Pruner(pl_module, self.config, optimizer=optimizer)
        if self._pending_state is not None:
            self.pruner.load_state_dict(self._pending_state)
            self._pending_state = None
        self._last_global_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.pruner is None:
            return
        while self._last_global_step < trainer.global_step:  # one pruner step per optimizer step
            target = self.pruner.step()
            self._last_global_step += 1
            self.history.append((self._last_global_step, target, self.pruner.sparsity()))

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pruner is not None:
            self.pruner.load_state_dict(state_dict)
        elif state_dict:
            self._pending_state = dict(state_dict)


__all__ = ["PrunerCallback"]
