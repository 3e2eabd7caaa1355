"""Automatic per-layer ratios from sensitivity curves.

Given a global target (fraction of weights, parameters, MACs or latency to remove), choose the
ratio ``r_i`` of every analysed layer to minimise the predicted loss increase::

    minimise   sum_i  dL_i(r_i)              dL_i: the layer's measured curve, interpolated
    subject to sum_i  r_i * c_i = target * sum_i c_i      c_i: the layer's cost (weights, MACs, ...)
               0 <= r_i <= max_ratio

Each curve (with the point ``(0, 0)``) is replaced by its lower convex hull; the hull segments of
all layers are taken in order of increasing loss per unit of removed cost (the greedy
marginal-cost rule, which is exact for convex curves and equals a Lagrangian sweep over lambda),
and the last segment is taken in part so the target is hit exactly. Ratios are then rounded to
whole units (weights or channels) and nudged until the achieved value is within ``tolerance``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.analysis.estimates import ESTIMATORS
from prunekit.analysis.result import SensitivityResult
from prunekit.analysis.sweep import iter_curve
from prunekit.core import (
    UNSET,
    ConfigMixin,
    match_names,
    merge_config,
    register_config,
)
from prunekit.errors import ConfigError, PlanError

TargetKind = Literal["sparsity", "params", "macs", "latency"]
TARGET_KINDS: tuple[str, ...] = ("sparsity", "params", "macs", "latency")
SOURCES: tuple[str, ...] = ("measured", *ESTIMATORS)


@dataclass(frozen=True, kw_only=True)
class AllocationPlan(Mapping[str, float]):
    """Per-layer pruning ratios chosen by :func:`allocate`; a read-only mapping ``{module_name: ratio}``.

    Pass it to :func:`apply_allocation` (weights through ``prune_weights(..., scope="layer")``,
    channels through ``prune_channels`` or channel masks), or use ``dict(plan)`` anywhere a
    ``{module_name: ratio}`` mapping is accepted.

    Attributes:
        ratios: module name -> pruning ratio (fraction of its weights or output channels).
        by: what the target counts: ``sparsity``, ``params``, ``macs`` or ``latency``.
        target: requested fraction of ``by`` to remove over the analysed layers.
        achieved: fraction actually removed with the rounded ratios.
        predicted_loss_increase: sum of the interpolated curves at the chosen ratios.
        uniform_predicted_loss_increase: the same for one uniform ratio hitting the same target.
        granularity: ``"layer"`` (weights) or ``"channel"``.
        criterion: the criterion the curves were measured with.
        source: ``"measured"`` curves or an estimator (``"taylor"``, ``"fisher"``).
        costs: module name -> its cost in units of ``by``.
    """

    ratios: dict[str, float]
    by: str
    target: float
    achieved: float
    predicted_loss_increase: float
    uniform_predicted_loss_increase: float
    granularity: str = "layer"
    criterion: str = "magnitude"
    source: str = "measured"
    costs: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.ratios[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ratios)

    def __len__(self) -> int:
        return len(self.ratios)

    __hash__ = None  # type: ignore[assignment]  # a plan holds dicts; compare, do not hash

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "version": 1,
            "ratios": dict(self.ratios),
            "by": self.by,
            "target": self.target,
            "achieved": self.achieved,
            "predicted_loss_increase": self.predicted_loss_increase,
            "uniform_predicted_loss_increase": self.uniform_predicted_loss_increase,
            "granularity": self.granularity,
            "criterion": self.criterion,
            "source": self.source,
            "costs": dict(self.costs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AllocationPlan:
        """Rebuild a plan written by :meth:`to_dict`."""
        try:
            return cls(
                ratios={str(k): float(v) for k, v in data["ratios"].items()},
                by=str(data["by"]),
                target=float(data["target"]),
                achieved=float(data["achieved"]),
                predicted_loss_increase=float(data["predicted_loss_increase"]),
                uniform_predicted_loss_increase=float(data["uniform_predicted_loss_increase"]),
                granularity=str(data.get("granularity", "layer")),
                criterion=str(data.get("criterion", "magnitude")),
                source=str(data.get("source", "measured")),
                costs={str(k): float(v) for k, v in data.get("costs", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"not an allocation plan dict ({e!r}); expected the keys of AllocationPlan.to_dict"
            ) from e

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def __str__(self) -> str:
        lines = [
            f"Allocation ({self.granularity}, by {self.by}): target {self.target:.4f}, achieved {self.achieved:.4f}",
            f"predicted loss increase {self.predicted_loss_increase:.4f} "
            f"(uniform ratio: {self.uniform_predicted_loss_increase:.4f})",
        ]
        lines += [f"  {name:<48} {ratio:6.3f}" for name, ratio in self.ratios.items()]
        return "\n".join(lines)


def _interp(points: Sequence[tuple[float, float]], r: float) -> float:
    """Piecewise-linear interpolation of ``points`` (ascending x) at ``r``; flat beyond the last point."""
    if r <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if r <= x1:
            return y0 + (y1 - y0) * (r - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


def _lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of points sorted by x (Andrew's monotone chain, lower half)."""
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:  # hull[-1] is not below the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _costs(result: SensitivityResult, by: str, latency: Mapping[str, float] | None) -> dict[str, float]:
    costs: dict[str, float] = {}
    for la in result.layers:
        if by == "sparsity":
            costs[la.name] = float(la.numel)
        elif by == "params":
            # a channel takes its bias entry with it
            costs[la.name] = float(la.numel + (la.units if result.granularity == "channel" else 0))
        elif by == "macs":
            costs[la.name] = float(la.macs)
        else:
            assert latency is not None
            costs[la.name] = float(latency[la.name])
    return costs


@register_config
@dataclass(frozen=True, kw_only=True)
class AllocationConfig(ConfigMixin):
    """Every option of :func:`allocate` (the sensitivity result is its argument).

    Attributes:
        target: fraction of ``by`` (default: the weights, ``by="sparsity"``) to remove over the analysed
            layers, in (0, 1).
        by: ``"sparsity"``, ``"params"``, ``"macs"`` or ``"latency"``.
        source: ``"measured"`` curves or a one-pass estimate (``"taylor"``, ``"fisher"``).
        max_ratio: largest ratio any layer may get (default: the largest measured ratio).
        exclude: layer names to keep at ratio 0.
        latency: module name -> measured latency (seconds), for ``by="latency"``.
        costs: module name -> cost, overriding the cost of those layers for ``by``.
        tolerance: accepted relative error of the achieved target.
    """

    target: float
    by: TargetKind = "sparsity"
    source: str = "measured"
    max_ratio: float | None = None
    exclude: tuple[str, ...] = ()
    latency: Mapping[str, float] | None = None
    costs: Mapping[str, float] | None = None
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "exclude", (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        )
        if self.by not in TARGET_KINDS:
            raise ConfigError(f"by must be one of {', '.join(TARGET_KINDS)}, got {self.by!r}")
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if (
            isinstance(self.target, bool)
            or not isinstance(self.target, (int, float))
            or not 0.0 < float(self.target) < 1.0
        ):
            raise ConfigError(f"target must be a fraction to remove in (0, 1), got {self.target!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ConfigError(f"tolerance must be in [0, 1), got {self.tolerance}")


def allocate(
    result: SensitivityResult,
    target: float = UNSET,
    *,
    by: TargetKind = UNSET,
    source: str = UNSET,
    max_ratio: float | None = UNSET,
    exclude: Sequence[str] = UNSET,
    latency: Mapping[str, float] | None = UNSET,
    costs: Mapping[str, float] | None = UNSET,
    tolerance: float = UNSET,
    config: AllocationConfig | None = None,
) -> AllocationPlan:
    """Choose per-layer ratios that hit a global target with the least predicted loss increase.

    Args:
        result: curves from :func:`prunekit.analysis.sweep`.
        target: fraction of ``by`` to remove over the analysed layers, in (0, 1). E.g.
            ``target=0.8, by="sparsity"`` zeroes 80% of the analysed weights.
        by: ``"sparsity"`` (weights), ``"params"`` (weights plus the bias of removed channels),
            ``"macs"`` (multiply-accumulates of the non-zero weights / kept channels, per layer as
            recorded by the analysis) or ``"latency"`` (needs ``latency=``, see
            :func:`layer_latency`); costs are assumed to fall linearly with a layer's ratio.
        source: ``"measured"`` curves (default) or a one-pass estimate (``"taylor"``, ``"fisher"``).
        max_ratio: largest ratio any layer may get; default (and upper bound): the largest
            measured ratio (curves are never extrapolated).
        exclude: layer names to keep at ratio 0.
        latency: module name -> measured latency (seconds) of every analysed layer, for ``by="latency"``.
        costs: module name -> cost, overriding the cost of those layers for ``by`` (e.g. for channel
            plans, a layer's own MACs plus the MACs of the next layer's input slice it takes away).
        tolerance: accepted relative error of the achieved target (0.01 = 1%).
        config: an :class:`AllocationConfig` holding every option above; a keyword that sets the same
            option as ``config`` raises ``ConfigError``.

    Returns:
        An :class:`AllocationPlan` (a ``{module_name: ratio}`` mapping with the prediction).

    Raises:
        ConfigError: invalid ``target``, ``by``, ``source``, ``max_ratio`` or a missing latency entry.
        UnknownModuleError: an ``exclude`` name is not in the result.
        PlanError: the target cannot be reached with ``max_ratio`` on the remaining layers.

    Example:
        >>> import prunekit as pk
        >>> res = pk.SensitivityResult.from_dict({"baseline_loss": 1.0, "layers": [
        ...     {"name": "a", "numel": 100, "ratios": [0.5, 0.9], "loss": [1.0, 1.1]},
        ...     {"name": "b", "numel": 100, "ratios": [0.5, 0.9], "loss": [2.0, 5.0]}]})
        >>> plan = pk.allocate(res, target=0.5)
        >>> dict(plan), plan.achieved
        ({'a': 0.9, 'b': 0.1}, 0.5)
    """
    if result.granularity == "head":
        raise ConfigError(
            "allocate needs per-layer curves over ratios; a granularity='head' result holds one point per head. "
            "Rank heads with result.ranking(), or run sensitivity(..., granularity='layer' or 'channel')"
        )
    if config is None and target is UNSET:
        raise ConfigError("allocate needs target= (the fraction to remove, in (0, 1)) or config=")
    cfg = merge_config(
        AllocationConfig,
        config,
        verb="allocate",
        target=target,
        by=by,
        source=source,
        max_ratio=max_ratio,
        exclude=exclude,
        latency=latency,
        costs=costs,
        tolerance=tolerance,
    )
    target, by, source, max_ratio, exclude = cfg.target, cfg.by, cfg.source, cfg.max_ratio, cfg.exclude
    latency, costs, tolerance = cfg.latency, cfg.costs, cfg.tolerance
    from prunekit.core import check_finite_values, check_real

    check_real(
        "allocate", "target (the fraction to remove)", target, low=0, high=1, low_open=True, high_open=True
    )
    check_real("allocate", "tolerance", tolerance, low=0, high=1, high_open=True)
    check_real("allocate", "max_ratio", max_ratio, low=0, high=1, low_open=True, optional=True)
    for la in result.layers:  # NaN/inf in a curve would give a plan that means nothing
        used = {"loss": la.loss, source: getattr(la, source, None) if source != "measured" else la.loss}
        check_finite_values(
            "allocate",
            "sensitivity curve",
            [(f"{la.name}.{k}", list(v)) for k, v in used.items() if v is not None],
        )
    check_finite_values("allocate", "cost", costs or {})
    check_finite_values("allocate", "latency", latency or {})
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance}")
    if not result.layers:
        raise ConfigError("the sensitivity result has no layers to allocate over")
    top = min(la.ratios[-1] for la in result.layers)
    if max_ratio is None:
        max_ratio = top
    if not 0.0 < max_ratio <= top:
        raise ConfigError(
            f"max_ratio must be in (0, {top}] (the largest measured ratio; curves are not extrapolated), got {max_ratio}"
        )
    names = result.names
    exclude = tuple(match_names(names, exclude, what="exclude", owner="the analysed layers"))
    if by == "latency":
        if latency is None:
            raise ConfigError(
                "by='latency' needs latency={module_name: seconds}; measure it with pk.layer_latency(...)"
            )
        missing = [n for n in names if n not in latency]
        if missing:
            raise ConfigError(f"latency table has no entry for {missing}; give one for every analysed layer")
    if costs is not None:
        unknown = [n for n in costs if n not in names]
        negative = {n: c for n, c in costs.items() if not float(c) >= 0}
        if unknown or negative:
            raise ConfigError(
                f"costs= must map analysed layers to non-negative numbers; unknown: {unknown}, invalid: {negative}"
            )
    target = float(target)
    costs = {**_costs(result, by, latency), **{n: float(c) for n, c in (costs or {}).items()}}
    total = sum(costs.values())
    if total <= 0:
        raise ConfigError(f"the analysed layers have no {by} cost (all zero); choose another by=")
    curves = {n: _clip(list(iter_curve(result, n, source)), max_ratio) for n in names}
    free = [n for n in names if n not in exclude and costs[n] > 0]
    reachable = sum(costs[n] for n in free) * max_ratio / total
    if reachable < target * (1 - tolerance):
        raise PlanError(
            f"cannot remove {target:.1%} of the {by}: at most {reachable:.1%} with max_ratio={max_ratio} "
            f"on {len(free)} layers (excluded: {list(exclude)}). Lower the target, raise max_ratio "
            "(measure higher ratios) or exclude fewer layers"
        )

    ratios = _greedy(curves, costs, free, target * total)
    units = {la.name: la.units for la in result.layers}
    ratios = _round_units(ratios, curves, costs, units, free, target, total, tolerance, max_ratio)
    achieved = sum(ratios[n] * costs[n] for n in names) / total
    uniform = min(target * total / sum(costs[n] for n in free), max_ratio)
    return AllocationPlan(
        ratios=ratios,
        by=by,
        target=target,
        achieved=achieved,
        predicted_loss_increase=sum(_interp(curves[n], ratios[n]) for n in names),
        uniform_predicted_loss_increase=sum(_interp(curves[n], uniform) for n in free),
        granularity=result.granularity,
        criterion=result.criterion,
        source=source,
        costs=costs,
    )


def _clip(points: list[tuple[float, float]], max_ratio: float) -> list[tuple[float, float]]:
    kept = [p for p in points if p[0] <= max_ratio]
    if kept[-1][0] < max_ratio:
        kept.append((max_ratio, _interp(points, max_ratio)))
    return kept


def _greedy(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    costs: Mapping[str, float],
    free: Sequence[str],
    need: float,
) -> dict[str, float]:
    """Take hull segments by increasing loss per unit cost until ``need`` cost is removed."""
    segments: list[tuple[float, int, int, str, float, float]] = []
    for li, name in enumerate(free):
        hull = _lower_hull(curves[name])
        for si, ((x0, y0), (x1, y1)) in enumerate(zip(hull, hull[1:], strict=False)):
            slope = (y1 - y0) / ((x1 - x0) * costs[name])
            segments.append((slope, li, si, name, x0, x1))
    segments.sort(key=lambda s: (s[0], s[1], s[2]))
    ratios = {name: 0.0 for name in curves}
    removed = 0.0
    for _, _, _, name, x0, x1 in segments:
        if removed >= need:
            break
        gain = (x1 - x0) * costs[name]
        if removed + gain <= need:
            ratios[name], removed = x1, removed + gain
        else:
            ratios[name] = x0 + (need - removed) / costs[name]
            removed = need
    return ratios


def _round_units(
    ratios: dict[str, float],
    curves: Mapping[str, Sequence[tuple[float, float]]],
    costs: Mapping[str, float],
    units: Mapping[str, int],
    free: Sequence[str],
    target: float,
    total: float,
    tolerance: float,
    max_ratio: float,
) -> dict[str, float]:
    """Round each ratio to whole units (k / units), then add/remove single units until within tolerance."""
    limit = {n: int(math.floor(max_ratio * units[n] + 1e-9)) for n in ratios}
    counts = {n: min(int(round(r * units[n])), limit[n]) for n, r in ratios.items()}

    def achieved() -> float:
        return sum(counts[n] / units[n] * costs[n] for n in counts) / total

    def step_cost(n: int, name: str, d: int) -> float:
        return (_interp(curves[name], (n + d) / units[name]) - _interp(curves[name], n / units[name])) / (
            costs[name] / units[name]
        )

    for _ in range(4 * len(counts) + 16):
        err = achieved() - target
        if abs(err) <= tolerance * target:
            break
        if err < 0:
            options = [n for n in free if counts[n] < limit[n]]
            if not options:
                break
            best = min(options, key=lambda n: step_cost(counts[n], n, 1))
            counts[best] += 1
        else:
            options = [n for n in free if counts[n] > 0]
            if not options:
                break
            best = max(options, key=lambda n: -step_cost(counts[n], n, -1))
            counts[best] -= 1
    return {n: counts[n] / units[n] for n in ratios}


__all__ = ["AllocationConfig", "AllocationPlan", "allocate"]
