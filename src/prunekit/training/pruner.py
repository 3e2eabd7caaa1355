"""Pruning during training, driven by one call per step.

::

    for x, y in loader:                      # any plain PyTorch loop
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward()
        optimizer.step()
        pruner.step()                        # after optimizer.step(), before the next zero_grad

:class:`Pruner` masks weights (through :func:`prunekit.prune_weights`) so that the sparsity after
step ``t`` is exactly ``schedule.sparsity(t)`` (up to one weight of rounding), and optionally moves
the mask at constant sparsity (prune-and-regrow)::

    every `every` steps until `end_step`:    f_t = drop_fraction * (1 + cos(pi * t / end_step)) / 2
      per layer: drop the f_t * active weights of smallest |w|
                 grow as many among the inactive ones: SET = at random, RigL = largest |grad|
      grown weights start at exactly 0 and their optimizer state (momentum, Adam moments) is reset

:class:`ChannelPruner` does the structured version: whole output channels are masked on a schedule
during training, and :meth:`ChannelPruner.finalize` removes them physically at the end. The model's
parameters are then new, smaller tensors: **rebuild the optimizer after ``finalize``**. With
``ChannelPrunerConfig(physical="each_step")`` every schedule update removes the channels right away
through :func:`prunekit.prune_channels`, and the optimizer given to the pruner has its state sliced
(:func:`prunekit.resize_optimizer`) so the same loop and optimizer go on.

Under ``DistributedDataParallel`` every mask decision is broadcast from rank 0, so masks stay
identical on every rank even for random criteria or random regrowth.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from prunekit.core import (
    UNSET,
    ConfigMixin,
    masked_parameters,
    merge_config,
    register_config,
)
from prunekit.errors import ConfigError
from prunekit.training.schedules import Schedule

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

REGROWTH_METHODS = ("rigl", "set")
DECAYS = ("constant", "cosine")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel``/``DataParallel`` wrappers (else the model)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Make every rank's masks equal to rank ``src``'s (no-op outside distributed runs).

    Every rank must hold the same set of masked parameters (true when all ranks prune the same
    model with the same config).
    """
    if not _distributed():
        return
    for mp in masked_parameters(unwrap(model)):
        buf = mp.mask.to(torch.uint8)  # gloo has no bool collectives
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            mp.mask.copy_(buf.bool())
            mp.param.mul_(mp.mask)


def mask_sparsity(model: nn.Module) -> float:
    """Fraction of masked-out entries over all masked parameters (0.0 when nothing is masked)."""
    total = pruned = 0
    for mp in masked_parameters(unwrap(model)):
        total += mp.mask.numel()
        pruned += mp.mask.numel() - int(mp.mask.sum())
    return pruned / total if total else 0.0


@register_config
@dataclass(frozen=True, kw_only=True)
class RegrowthConfig(ConfigMixin):
    """Prune-and-regrow at constant sparsity (SET: Mocanu et al. 2018; RigL: Evci et al. 2020).

    Args:
        method: ``"set"`` (random regrowth) or ``"rigl"`` (regrow where the dense gradient is largest).
        every: steps between mask updates (``delta T``).
        drop_fraction: fraction of active weights dropped (and regrown) at the first update.
        decay: ``"cosine"`` (``drop_fraction * (1 + cos(pi t / end_step)) / 2``) or ``"constant"``.
        start_step: first step that may update the mask.
        end_step: no updates at or after this step (RigL stops at 75% of training).
    """

    method: Literal["set", "rigl"] = "rigl"
    every: int = 100
    drop_fraction: float = 0.3
    decay: Literal["cosine", "constant"] = "cosine"
    start_step: int = 1
    end_step: int

    def __post_init__(self) -> None:
        if self.method not in REGROWTH_METHODS:
            raise ConfigError(
                f"unknown regrowth method {self.method!r}; valid: {', '.join(REGROWTH_METHODS)}"
            )
        if self.decay not in DECAYS:
            raise ConfigError(f"unknown drop-fraction decay {self.decay!r}; valid: {', '.join(DECAYS)}")
        if not 0.0 < self.drop_fraction <= 1.0:
            raise ConfigError(f"drop_fraction must be in (0, 1], got {self.drop_fraction}")
        if self.every < 1 or self.start_step < 0 or self.end_step < 1:
            raise ConfigError(
                f"need every >= 1, start_step >= 0, end_step >= 1; got every={self.every}, "
                f"start_step={self.start_step}, end_step={self.end_step}"
            )

    def fraction(self, step: int) -> float:
        """The drop fraction at ``step``."""
        if self.decay == "constant":
            return self.drop_fraction
        return self.drop_fraction * 0.5 * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))

    def is_update(self, step: int) -> bool:
        return self.start_step <= step < self.end_step and step % self.every == 0


@register_config
@dataclass(frozen=True, kw_only=True)
class PrunerConfig(ConfigMixin):
    """How a :class:`Pruner` prunes during training.

    Args:
        schedule: the target sparsity per step (see :mod:`prunekit.training.schedules`).
        criterion: passed to :func:`prunekit.prune_weights` (``"magnitude"``, ``"random"``, or an object).
        scope: ``"global"`` (one threshold over all layers) or ``"layer"`` (same sparsity per layer).
        include: module names/globs/types to prune (default: all Linear/Conv weights).
        exclude: module names/globs/types to leave alone.
        regrowth: optional prune-and-regrow at constant sparsity.
        seed: seed of the pruner's own generator (SET regrowth), checkpointed with the pruner.
        sync_distributed: broadcast masks from rank 0 after each change under DDP.
    """

    schedule: Schedule
    criterion: Any = "magnitude"
    scope: Literal["global", "layer"] = "global"
    include: tuple[Any, ...] | None = None
    exclude: tuple[Any, ...] | None = None
    regrowth: RegrowthConfig | None = None
    seed: int = 0
    sync_distributed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            raise ConfigError(
                f"schedule must be a prunekit.training.schedules.Schedule (e.g. CubicSchedule(...)), got {type(self.schedule).__name__}"
            )
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


class Pruner:
    """Prunes a model on a schedule, one :meth:`step` per optimizer step (in place).

    Args:
        model: the model (or its DDP wrapper); pruned in place.
        config: a :class:`PrunerConfig`; or give its fields (``schedule``, ``criterion``, ``scope``,
            ``include``, ``exclude``, ``regrowth``, ``seed``, ``sync_distributed``) as keywords. A keyword
            that sets the same option as ``config`` raises ``ConfigError``.
        schedule: shortcut for ``PrunerConfig(schedule=schedule)``.
        optimizer: needed for regrowth (to reset the optimizer state of regrown weights).

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> pruner = pk.Pruner(model, schedule=pk.CubicSchedule(final_sparsity=0.8, start_step=0, end_step=4))
        >>> for _ in range(5):
        ...     loss = model(torch.randn(4, 8)).sum(); opt.zero_grad(); loss.backward(); opt.step()
        ...     _ = pruner.step()
        >>> round(pruner.sparsity(), 2)
        0.8
    """

    def __init__(
        self,
        model: nn.Module,
        config: PrunerConfig | None = None,
        *,
        schedule: Schedule = UNSET,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: Any = UNSET,
        scope: Literal["global", "layer"] = UNSET,
        include: Any = UNSET,
        exclude: Any = UNSET,
        regrowth: RegrowthConfig | None = UNSET,
        seed: int = UNSET,
        sync_distributed: bool = UNSET,
    ) -> None:
        if config is None and schedule is UNSET:
            raise ConfigError("Pruner needs config=PrunerConfig(...) or schedule=...")
        config = merge_config(
            PrunerConfig,
            config,
            verb="Pruner",
            schedule=schedule,
            criterion=criterion,
            scope=scope,
            include=include,
            exclude=exclude,
            regrowth=regrowth,
            seed=seed,
            sync_distributed=sync_distributed,
        )
        if config.regrowth is not None and optimizer is None:
            raise ConfigError("regrowth resets the optimizer state of regrown weights: pass optimizer=")
        self.model = model
        self.config = config
        self.optimizer = optimizer
        self.step_count = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_regrowth: dict[str, torch.Tensor] = {}  # fqn -> bool tensor of positions grown last update

    @property
    def schedule(self) -> Schedule:
        return self.config.schedule

    def sparsity(self) -> float:
        """Current fraction of masked-out weights (over the masked parameters)."""
        return mask_sparsity(self.model)

    def target(self, step: int | None = None) -> float:
        """The schedule's sparsity at ``step`` (default: the last step taken)."""
        return self.schedule.sparsity(self.step_count - 1 if step is None else step)

    def step(self) -> float:
        """Advance one step: prune if the schedule says so, regrow if due; return the target sparsity."""
        t = self.step_count
        if self.schedule.is_update(t):
            self.prune_to(self.schedule.sparsity(t))
        rg = self.config.regrowth
        if rg is not None and rg.is_update(t) and any(True for _ in masked_parameters(unwrap(self.model))):
            self.regrow(rg.fraction(t))
        self.step_count += 1
        return self.schedule.sparsity(t)

    def prune_to(self, sparsity: float) -> None:
        """Raise the sparsity to ``sparsity`` now (cumulative with existing masks)."""
        from prunekit.weights import prune_weights

        if sparsity <= 0.0 and not any(True for _ in masked_parameters(unwrap(self.model))):
            return
        prune_weights(
            unwrap(self.model),
            sparsity,
            criterion=self.config.criterion,
            scope=self.config.scope,
            include=self.config.include,
            exclude=self.config.exclude,
        )
        if self.config.sync_distributed:
            broadcast_masks(self.model)

    @torch.no_grad()
    def regrow(self, fraction: float) -> int:
        """Drop ``fraction`` of each layer's active weights (smallest |w|) and grow as many elsewhere.

        Grown weights are set to exactly zero and their optimizer state is zeroed. Returns the number
        of weights moved over all layers.

        Raises:
            ConfigError: for RigL when a masked weight has no gradient (call ``step()`` before ``zero_grad``).
        """
        rg = self.config.regrowth
        if rg is None:
            raise ConfigError("regrow() needs PrunerConfig(regrowth=RegrowthConfig(...))")
        moved = 0
        plans = []
        for mp in masked_parameters(unwrap(self.model)):
            if rg.method == "rigl" and mp.param.grad is None:
                raise ConfigError(
                    f"RigL regrowth needs the gradient of {mp.fqn}: call pruner.step() after optimizer.step() "
                    "and before optimizer.zero_grad()"
                )
            plans.append(mp)
        before = {mp.fqn: mp.mask.clone() for mp in plans}
        for mp in plans:
            mask = mp.mask.view(-1)
            n_active = int(mask.sum())
            n_inactive = mask.numel() - n_active
            k = min(int(fraction * n_active), n_inactive)
            if k <= 0:
                continue
            w = mp.param.detach().view(-1).abs().float()
            drop_score = torch.where(mask, w, torch.full_like(w, math.inf))
            drop = torch.topk(drop_score, k, largest=False).indices
            if rg.method == "set":
                grow_score = torch.rand(mask.numel(), generator=self.generator)
            else:
                assert mp.param.grad is not None
                grow_score = mp.param.grad.detach().view(-1).abs().float()
            grow_score = torch.where(mask, torch.full_like(grow_score, -math.inf), grow_score)
            grow = torch.topk(grow_score, k, largest=True).indices
            new = mask.clone()
            new[drop] = False
            new[grow] = True
            mask.copy_(new)
        if self.config.sync_distributed:
            broadcast_masks(self.model)  # rank 0 decides; the grown set below is computed after this
        self.last_regrowth = {}
        for mp in masked_parameters(unwrap(self.model)):
            mp.param.mul_(mp.mask)
            old = before.get(mp.fqn)
            if old is None:
                continue
            grown = mp.mask & ~old
            self.last_regrowth[mp.fqn] = grown
            mp.param[grown] = 0.0
            self._reset_optimizer_state(mp.param, grown)
            moved += int(grown.sum())
        return moved

    def _reset_optimizer_state(self, param: nn.Parameter, where: torch.Tensor) -> None:
        if self.optimizer is None:
            return
        state = self.optimizer.state.get(param)
        if not state:
            return
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value[where] = 0

    def state_dict(self) -> dict[str, Any]:
        """The pruner's position (step) and generator state; masks live in the model's state_dict."""
        return {"step": self.step_count, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model's masks are restored with the model)."""
        self.step_count = int(state["step"])
        if "generator" in state:
            self.generator.set_state(state["generator"])


# --------------------------------------------------------------------------- structured (channels)


__all__ = [
    "Pruner",
    "PrunerConfig",
    "RegrowthConfig",
    "broadcast_masks",
    "mask_sparsity",
    "unwrap",
]
