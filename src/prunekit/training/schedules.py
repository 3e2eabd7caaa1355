"""Sparsity schedules: the target sparsity in force after each training step.

A schedule is a pure function of the step index ``t`` (0 for the first ``pruner.step()``), so its
"position" is just the step counter, which checkpoints store. Three shapes::

    constant / one-shot   s ─────────┐▁▁▁▁▁▁▁▁▁▁     (all at ``at_step``)
    iterative             s ▁▁┌──┘┌──┘┌──┘┌───      (a fraction of what is left, every ``every`` steps)
    cubic (Zhu & Gupta)   s ▁▁╱‾‾‾‾‾‾‾‾‾‾‾‾‾‾       (fast early, slow late, every ``frequency`` steps)

The cubic ramp of Zhu & Gupta (2017) is
``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for ``t = t0, t0 + dt, ..., t0 + n * dt``.

Example:
    >>> from prunekit.training.schedules import CubicSchedule
    >>> sched = CubicSchedule(final_sparsity=0.9, start_step=0, end_step=100, frequency=10)
    >>> [round(sched.sparsity(t), 4) for t in (0, 9, 10, 50, 100, 500)]
    [0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
    >>> sched.is_update(10), sched.is_update(11)
    (True, False)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from prunekit.compat import renamed_kwargs
from prunekit.core import register_config
from prunekit.errors import ConfigError


def _check_fraction(name: str, value: float, *, allow_zero: bool = True) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value < 1.0) or math.isnan(value):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be in {bound}, got {value!r}")


def _check_step(name: str, value: int, minimum: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Base class: ``sparsity(t)`` is the target after step ``t``; the mask changes only where ``is_update(t)``."""

    kind: ClassVar[str] = "base"

    def sparsity(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def is_update(self, step: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def last_update_step(self) -> int:  # pragma: no cover - abstract
        """The last step at which the mask changes; after it the sparsity is :attr:`final_sparsity`."""
        raise NotImplementedError

    def end_sparsity(self) -> float:
        """The sparsity once the schedule has finished."""
        return self.sparsity(self.last_update_step)

    def update_steps(self, until: int) -> list[int]:
        """Every update step in ``[0, until)``."""
        return [t for t in range(until) if self.is_update(t)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (``kind`` plus the fields); :func:`schedule_from_dict` inverts it."""
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class ConstantSchedule(Schedule):
    """One-shot: jump to ``final_sparsity`` at step ``at_step`` and stay there.

    Args:
        final_sparsity: the sparsity, in [0, 1) (``target=`` is the deprecated spelling).
        at_step: the step at which to prune (default 0: the first ``pruner.step()``).
    """

    kind: ClassVar[str] = "constant"
    final_sparsity: float
    at_step: int = 0

    def __post_init__(self) -> None:
        _check_fraction("final_sparsity", self.final_sparsity)
        _check_step("at_step", self.at_step)

    def sparsity(self, step: int) -> float:
        return self.final_sparsity if step >= self.at_step else 0.0

    def is_update(self, step: int) -> bool:
        return step == self.at_step

    @property
    def last_update_step(self) -> int:
        return self.at_step


@dataclass(frozen=True, kw_only=True)
class IterativeSchedule(Schedule):
    """Iterative pruning: remove ``rate`` of the remaining weights every ``every`` steps, up to ``final_sparsity``.

    After round ``k`` (1-based) the sparsity is ``min(final_sparsity, 1 - (1 - rate) ** k)``; rounds
    start at ``start_step`` and stop once ``final_sparsity`` is reached.

    Args:
        final_sparsity: final sparsity in [0, 1) (``target=`` is the deprecated spelling).
        rate: fraction of the surviving weights pruned per round, in (0, 1).
        every: steps of fine-tuning between rounds (>= 1).
        start_step: the step of the first round.
    """

    kind: ClassVar[str] = "iterative"
    final_sparsity: float
    rate: float
    every: int
    start_step: int = 0

    def __post_init__(self) -> None:
        _check_fraction("final_sparsity", self.final_sparsity)
        _check_fraction("rate", self.rate, allow_zero=False)
        _check_step("every", self.every, 1)
        _check_step("start_step", self.start_step)

    @property
    def rounds(self) -> int:
        """Number of rounds needed to reach ``final_sparsity``."""
        if self.final_sparsity == 0.0:
            return 0
        k = math.ceil(math.log1p(-self.final_sparsity) / math.log1p(-self.rate) - 1e-12)
        return max(k, 1)

    def _round(self, step: int) -> int:
        if step < self.start_step:
            return 0
        return min(1 + (step - self.start_step) // self.every, self.rounds)

    def sparsity(self, step: int) -> float:
        k = self._round(step)
        return 0.0 if k == 0 else min(self.final_sparsity, 1.0 - (1.0 - self.rate) ** k)

    def is_update(self, step: int) -> bool:
        if step < self.start_step or (step - self.start_step) % self.every:
            return False
        return (step - self.start_step) // self.every < self.rounds

    @property
    def last_update_step(self) -> int:
        return self.start_step + max(self.rounds - 1, 0) * self.every


@dataclass(frozen=True, kw_only=True)
class CubicSchedule(Schedule):
    """Gradual pruning of Zhu & Gupta (2017): a cubic ramp from ``initial_sparsity`` to ``final_sparsity``.

    The mask is updated at ``start_step, start_step + frequency, ...`` and at ``end_step``;
    between updates the sparsity of the last update stays in force. Before ``start_step`` it is 0.

    Args:
        final_sparsity: ``s_f`` in [0, 1).
        initial_sparsity: ``s_i`` in [0, final_sparsity], applied at ``start_step``.
        start_step: ``t0``.
        end_step: ``t0 + n * dt``; must be >= ``start_step``.
        frequency: ``dt`` (>= 1).
    """

    kind: ClassVar[str] = "cubic"
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int = 1
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        _check_fraction("final_sparsity", self.final_sparsity)
        _check_fraction("initial_sparsity", self.initial_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError(
                f"initial_sparsity ({self.initial_sparsity}) must not exceed final_sparsity ({self.final_sparsity})"
            )
        _check_step("start_step", self.start_step)
        _check_step("frequency", self.frequency, 1)
        _check_step("end_step", self.end_step)
        if self.end_step < self.start_step:
            raise ConfigError(
                f"end_step ({self.end_step}) must be >= start_step ({self.start_step}); "
                "the ramp runs from start_step to end_step"
            )

    def _last_update(self, step: int) -> int:
        t = min(step, self.end_step)
        u = self.start_step + ((t - self.start_step) // self.frequency) * self.frequency
        return self.end_step if step >= self.end_step else u

    def sparsity(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        span = self.end_step - self.start_step
        if span == 0:
            return self.final_sparsity
        progress = (self._last_update(step) - self.start_step) / span
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def is_update(self, step: int) -> bool:
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0

    @property
    def last_update_step(self) -> int:
        return self.end_step


def _deprecated_target(self: Schedule) -> float:
    from prunekit.compat import warn

    warn(f"{type(self).__name__}.target", f"{type(self).__name__}.final_sparsity", stacklevel=3)
    return float(getattr(self, "final_sparsity"))  # noqa: B009


_renamed: type[Schedule]
for _renamed in (ConstantSchedule, IterativeSchedule):
    # one spelling for every schedule: final_sparsity= (target= warns for one release)
    setattr(_renamed, "__init__", renamed_kwargs(_renamed.__name__, target="final_sparsity")(_renamed.__init__))  # noqa: B010
    setattr(_renamed, "target", property(_deprecated_target))  # noqa: B010

SCHEDULES: dict[str, type[Schedule]] = {
    "constant": ConstantSchedule,
    "oneshot": ConstantSchedule,
    "iterative": IterativeSchedule,
    "cubic": CubicSchedule,
    "gradual": CubicSchedule,
}


def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """Build a schedule from its registry name (``constant``/``oneshot``, ``iterative``, ``cubic``/``gradual``).

    Raises:
        ConfigError: for an unknown name or bad arguments.

    Example:
        >>> make_schedule("oneshot", final_sparsity=0.5).sparsity(0)
        0.5
    """
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ConfigError(f"unknown schedule {name!r}; valid names are {', '.join(sorted(SCHEDULES))}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        valid = [f.name for f in fields(cls)]
        raise ConfigError(f"bad arguments for schedule {name!r}: {e}. Valid fields: {valid}") from e


def schedule_from_dict(data: dict[str, Any]) -> Schedule:
    """Inverse of :meth:`Schedule.to_dict`."""
    data = dict(data)
    kind = data.pop("kind", None)
    if not isinstance(kind, str):
        raise ConfigError(f"schedule dict needs a 'kind' among {sorted(SCHEDULES)}, got {kind!r}")
    return make_schedule(kind, **data)


for _cls in (ConstantSchedule, IterativeSchedule, CubicSchedule):
    register_config(_cls)

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "CubicSchedule",
    "IterativeSchedule",
    "Schedule",
    "make_schedule",
    "schedule_from_dict",
]
