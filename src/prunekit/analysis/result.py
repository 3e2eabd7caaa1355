"""Result of a sensitivity analysis: per-layer curves, ranking, JSON/CSV export and the plot.

:class:`SensitivityResult` holds one :class:`LayerSensitivity` per layer (measured loss and optional
metric per ratio, optional Taylor/Fisher estimates) and :attr:`SensitivityResult.rank_correlation`,
Spearman's rho (:func:`spearman`) of each estimate against the measured curves. ``plot`` imports
matplotlib only when called.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.errors import ConfigError, UnknownModuleError

Granularity = Literal["layer", "channel", "head"]
GRANULARITIES: tuple[str, ...] = ("layer", "channel", "head")


# Spearman's rank correlation (by hand: average ranks for ties, then Pearson).
# ----------------------------------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (ties get average ranks); NaN if undefined.

    Example:
        >>> spearman([1.0, 2.0, 3.0], [10.0, 20.0, 15.0])
        0.5
    """
    if len(x) != len(y):
        raise ConfigError(f"spearman needs two sequences of the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=False))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


# Results.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayerSensitivity:
    """The measured curve of one layer.

    Attributes:
        name: the module's qualified name.
        kind: the module's class name.
        numel: elements of its weight.
        units: prunable units: ``numel`` (weights) or the number of output channels.
        macs: multiply-accumulates per example (0 if the layer did not run on the first batch).
        ratios: pruning ratios, ascending.
        loss: measured loss at each ratio.
        metric: measured metric at each ratio (``None`` without a metric).
        taylor: first-order Taylor estimate of the loss increase at each ratio.
        fisher: Fisher (second-order) estimate of the loss increase at each ratio.
    """

    name: str
    kind: str
    numel: int
    units: int
    macs: int
    ratios: tuple[float, ...]
    loss: tuple[float, ...]
    metric: tuple[float, ...] | None = None
    taylor: tuple[float, ...] | None = None
    fisher: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("loss", "metric", "taylor", "fisher"):
            values = getattr(self, key)
            if values is not None and len(values) != len(self.ratios):
                raise ConfigError(
                    f"layer {self.name!r}: {key} has {len(values)} values, expected one per ratio ({len(self.ratios)})"
                )
        if list(self.ratios) != sorted(self.ratios) or any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise ConfigError(f"layer {self.name!r}: ratios must be ascending in (0, 1], got {self.ratios}")


@dataclass(frozen=True, kw_only=True)
class SensitivityResult:
    """Per-layer sensitivity curves, the baseline, and how well the one-pass estimates rank layers.

    Attributes:
        layers: one :class:`LayerSensitivity` per analysed layer, in module order.
        baseline_loss: loss of the unpruned model on the same batches.
        baseline_metric: metric of the unpruned model (``None`` without a metric).
        metric_name: the metric's name for tables and plots.
        criterion: name of the criterion that chose what to prune.
        granularity: ``"layer"`` (single weights) or ``"channel"`` (output channels).
        rank_correlation: estimator -> Spearman rho between the estimated and the measured loss
            increase across layers, averaged over the ratios (the curves' mean).
        rank_correlation_per_ratio: estimator -> rho at each ratio.
    """

    layers: tuple[LayerSensitivity, ...]
    baseline_loss: float
    baseline_metric: float | None = None
    metric_name: str = "metric"
    criterion: str = "magnitude"
    granularity: str = "layer"
    rank_correlation: dict[str, float] = field(default_factory=dict)
    rank_correlation_per_ratio: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate layer names in a sensitivity result: {names}")

    @property
    def names(self) -> list[str]:
        """Analysed layer names, in module order."""
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> LayerSensitivity:
        """The curve of layer ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise UnknownModuleError(
            f"no layer {name!r} in this sensitivity result; analysed layers: {self.names}"
        )

    def delta(self, name: str) -> tuple[float, ...]:
        """Measured loss increase over the baseline at each ratio of layer ``name``."""
        return tuple(v - self.baseline_loss for v in self.layer(name).loss)

    def ranking(self) -> list[str]:
        """Layer names from the most to the least sensitive (mean measured loss increase)."""
        return sorted(self.names, key=lambda n: -sum(self.delta(n)) / max(1, len(self.delta(n))))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "version": 1,
            "baseline_loss": self.baseline_loss,
            "baseline_metric": self.baseline_metric,
            "metric_name": self.metric_name,
            "criterion": self.criterion,
            "granularity": self.granularity,
            "rank_correlation": dict(self.rank_correlation),
            "rank_correlation_per_ratio": {k: list(v) for k, v in self.rank_correlation_per_ratio.items()},
            "layers": [
                {
                    "name": la.name,
                    "kind": la.kind,
                    "numel": la.numel,
                    "units": la.units,
                    "macs": la.macs,
                    "ratios": list(la.ratios),
                    "loss": list(la.loss),
                    "metric": None if la.metric is None else list(la.metric),
                    "taylor": None if la.taylor is None else list(la.taylor),
                    "fisher": None if la.fisher is None else list(la.fisher),
                }
                for la in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityResult:
        """Rebuild a result written by :meth:`to_dict` (or build one from your own curves)."""

        def tup(v: Any) -> tuple[float, ...] | None:
            return None if v is None else tuple(float(x) for x in v)

        try:
            layers = tuple(
                LayerSensitivity(
                    name=str(d["name"]),
                    kind=str(d.get("kind", "")),
                    numel=int(d["numel"]),
                    units=int(d.get("units", d["numel"])),
                    macs=int(d.get("macs", 0)),
                    ratios=tuple(float(r) for r in d["ratios"]),
                    loss=tuple(float(x) for x in d["loss"]),
                    metric=tup(d.get("metric")),
                    taylor=tup(d.get("taylor")),
                    fisher=tup(d.get("fisher")),
                )
                for d in data["layers"]
            )
            return cls(
                layers=layers,
                baseline_loss=float(data["baseline_loss"]),
                baseline_metric=None
                if data.get("baseline_metric") is None
                else float(data["baseline_metric"]),
                metric_name=str(data.get("metric_name", "metric")),
                criterion=str(data.get("criterion", "magnitude")),
                granularity=str(data.get("granularity", "layer")),
                rank_correlation={k: float(v) for k, v in data.get("rank_correlation", {}).items()},
                rank_correlation_per_ratio={
                    k: tuple(float(x) for x in v)
                    for k, v in data.get("rank_correlation_per_ratio", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(
                f"not a sensitivity result dict ({e!r}); expected the keys written by SensitivityResult.to_dict"
            ) from e

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; return the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def to_csv(self, path: str | Path) -> Path:
        """One row per (layer, ratio): loss, loss increase, metric and estimates; return the path."""
        path = Path(path)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                [
                    "layer",
                    "kind",
                    "numel",
                    "macs",
                    "ratio",
                    "loss",
                    "delta_loss",
                    self.metric_name,
                    "taylor",
                    "fisher",
                ]
            )
            for la in self.layers:
                for i, r in enumerate(la.ratios):
                    writer.writerow(
                        [
                            la.name,
                            la.kind,
                            la.numel,
                            la.macs,
                            r,
                            la.loss[i],
                            la.loss[i] - self.baseline_loss,
                            "" if la.metric is None else la.metric[i],
                            "" if la.taylor is None else la.taylor[i],
                            "" if la.fisher is None else la.fisher[i],
                        ]
                    )
        return path

    def plot(self, path: str | Path, *, max_layers: int = 40) -> Path:
        """Save the curves (loss increase and metric against ratio, one line per layer) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        has_metric = self.baseline_metric is not None
        fig, axes = plt.subplots(
            1, 2 if has_metric else 1, figsize=(12 if has_metric else 7, 4.5), squeeze=False
        )
        shown = self.layers[:max_layers]
        # with many layers, name only the most sensitive ones (mean loss increase) in the legend
        labelled = set(self.ranking()[:8]) if len(shown) > 12 else {la.name for la in shown}
        for la in shown:
            label = la.name if la.name in labelled else "_nolegend_"
            xs = [0.0, *la.ratios]
            axes[0][0].plot(xs, [0.0, *(v - self.baseline_loss for v in la.loss)], marker=".", label=label)
            if has_metric and la.metric is not None:
                axes[0][1].plot(xs, [self.baseline_metric, *la.metric], marker=".", label=label)
        axes[0][0].set_xlabel(f"{self.granularity} pruning ratio ({self.criterion})")
        axes[0][0].set_ylabel("loss increase")
        axes[0][0].set_title("Sensitivity: one layer pruned at a time")
        if has_metric:
            axes[0][1].set_xlabel(f"{self.granularity} pruning ratio ({self.criterion})")
            axes[0][1].set_ylabel(self.metric_name)
        title = "most sensitive layers" if len(labelled) < len(shown) else None
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title=title)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path

    def __str__(self) -> str:
        ratios = self.layers[0].ratios if self.layers else ()
        head = f"{'layer':<40} " + " ".join(f"{r:>7.2f}" for r in ratios)
        lines = [
            f"Sensitivity ({self.granularity}, {self.criterion}): loss increase over baseline {self.baseline_loss:.4f}",
            head,
        ]
        for la in self.layers:
            lines.append(
                f"{la.name[-40:]:<40} " + " ".join(f"{v - self.baseline_loss:>7.3f}" for v in la.loss)
            )
        for est, rho in self.rank_correlation.items():
            lines.append(
                f"rank correlation (Spearman) of the {est} estimate with the measured curves: {rho:.3f}"
            )
        return "\n".join(lines)
