"""Sensitivity analysis: how much does the loss grow when one layer alone is pruned?

For every prunable layer and every ratio ``r`` the layer's lowest-scoring weights (or output
channels) are zeroed in place, the loss and an optional metric are measured on the user's
validation batches, and the layer's weight is copied back bit for bit::

    for layer in layers:                      # progress bar over layers
        saved = layer.weight.clone()          # one layer's tensor, never a model copy
        for r in ratios:
            layer.weight.mul_(keep_mask(r))   # prune this layer alone
            loss[layer, r] = evaluate(model, batches)
            layer.weight.copy_(saved)         # exact restore

A one-pass estimate needs no pruned forward at all. From per-batch gradients ``g_b`` of the loss
it predicts the loss increase of removing a set ``S`` of weights:

* first-order Taylor:  ``sum_{w in S} |G * w|`` with ``G`` the mean gradient;
* Fisher (second order): ``sum_{w in S} 1/2 * F * w**2`` with the empirical Fisher
  ``F = mean_b(g_b**2)`` (up to a constant factor: only the ranking across layers matters).

:attr:`SensitivityResult.rank_correlation` says how well each estimate ranks the layers
against the measured curves (Spearman's rho).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from prunekit.errors import ConfigError, DataRequiredError, ModuleNotFound

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Granularity = Literal["layer", "channel", "head"]
GRANULARITIES: tuple[str, ...] = ("layer", "channel", "head")
ESTIMATORS: tuple[str, ...] = ("taylor", "fisher")


# ----------------------------------------------------------------------------------------------
# Batches: inputs may be a tensor, a tuple of positional args or a dict of keyword args.
# ----------------------------------------------------------------------------------------------


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
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(
                f"{what}: every batch must be a pair (inputs, targets), got {type(item).__name__}"
                + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                + ". Wrap your data so it yields (inputs, targets); inputs may be a tensor, tuple or dict"
            )
        batches.append((item[0], item[1]))
    if not batches:
        raise DataRequiredError(
            f"{what}: data= yielded no batches; expected at least one (inputs, targets) pair"
        )
    return batches


class _EvalMode:
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


def evaluate(
    model: nn.Module,
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
    metric: Callable[[Any, Any], Any] | None = None,
) -> tuple[float, float | None]:
    """Example-weighted mean loss (and metric) of ``model`` over ``batches``, without gradients."""
    device = _device(model)
    total = loss_sum = metric_sum = 0.0
    with torch.no_grad():
        for inputs, targets in batches:
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            out = call_model(model, inputs)
            n = batch_size(inputs, targets)
            loss_sum += float(loss_fn(out, targets)) * n
            if metric is not None:
                metric_sum += float(metric(out, targets)) * n
            total += n
    return loss_sum / total, (metric_sum / total if metric is not None else None)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight tensor to prune")
    return weight


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Criteria: elementwise scores; low scores are pruned first.
# ----------------------------------------------------------------------------------------------


class SensitivityCriterion(Protocol):
    """Scores the entries of one weight tensor; the lowest-scoring ones are pruned first.

    ``grad`` is the mean gradient and ``fisher`` the empirical Fisher diagonal of the weight
    (both from the one-pass estimate), ``name`` the module's qualified name.
    """

    def __call__(
        self, weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor
    ) -> torch.Tensor: ...


def _magnitude(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return weight.abs()


def _l2(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return weight.square()


def _random(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))  # same draw for a layer every time
    return torch.rand(weight.shape, generator=gen).to(weight.device)


def _taylor(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return (grad * weight).abs()


def _fisher(weight: torch.Tensor, *, name: str, grad: torch.Tensor, fisher: torch.Tensor) -> torch.Tensor:
    return 0.5 * fisher * weight.square()


CRITERIA: dict[str, SensitivityCriterion] = {
    "fisher": _fisher,
    "l2": _l2,
    "magnitude": _magnitude,
    "random": _random,
    "taylor": _taylor,
}


def resolve_criterion(criterion: str | SensitivityCriterion) -> tuple[str, SensitivityCriterion]:
    """``(name, callable)`` for a registry name or a user callable."""
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ConfigError(
                f"unknown criterion {criterion!r}; valid names are {', '.join(sorted(CRITERIA))}"
            )
        return criterion, CRITERIA[criterion]
    if callable(criterion):
        return getattr(criterion, "__name__", type(criterion).__name__), criterion
    raise ConfigError(
        f"criterion must be a name ({', '.join(sorted(CRITERIA))}) or a callable, got {criterion!r}"
    )


# ----------------------------------------------------------------------------------------------
# Layers and masks.
# ----------------------------------------------------------------------------------------------


def _matches(name: str, module: nn.Module, spec: Any) -> bool:
    if isinstance(spec, str):
        return fnmatch.fnmatchcase(name, spec)
    if isinstance(spec, type):
        return isinstance(module, spec)
    return module is spec


def select_layers(
    model: nn.Module, include: Iterable[Any] | None = None, exclude: Iterable[Any] | None = None
) -> list[tuple[str, nn.Module]]:
    """Prunable ``(name, module)`` pairs: Linear/Conv by default, filtered by names/globs/types/modules.

    A weight shared by several modules (tied weights) is listed once, under its first name.
    """
    inc = list(include) if include is not None else None
    exc = list(exclude) if exclude is not None else []
    named = list(model.named_modules())
    for spec in (inc or []) + exc:
        if not any(_matches(n, m, spec) for n, m in named):
            raise ModuleNotFound(
                f"{spec!r} matches no module of {type(model).__name__}; "
                f"expected a module name or glob such as {named[-1][0]!r}, a module type, or a module"
            )
    seen: set[int] = set()
    out: list[tuple[str, nn.Module]] = []
    for name, module in named:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.ndim < 2:
            continue
        chosen = (
            any(_matches(name, module, s) for s in inc)
            if inc is not None
            else isinstance(module, PRUNABLE_TYPES)
        )
        if not chosen or any(_matches(name, module, s) for s in exc) or id(weight) in seen:
            continue
        seen.add(id(weight))
        out.append((name, module))
    return out


def keep_mask(scores: torch.Tensor, ratio: float, granularity: str) -> torch.Tensor:
    """Bool mask (shape of ``scores``) keeping all but the ``round(ratio * units)`` lowest units.

    ``units`` are single weights (``granularity="layer"``) or output channels, i.e. rows along
    dim 0 scored by the sum of their entries (``"channel"``). Ties break by position (stable sort).
    """
    unit_scores = scores.flatten() if granularity == "layer" else scores.reshape(scores.shape[0], -1).sum(1)
    k = int(round(ratio * unit_scores.numel()))
    keep = torch.ones(unit_scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        order = torch.sort(unit_scores.double(), stable=True).indices
        keep[order[:k]] = False
    if granularity == "layer":
        return keep.view_as(scores)
    return keep.view(-1, *([1] * (scores.ndim - 1))).expand_as(scores)


def _masked_scores(module: nn.Module, scores: torch.Tensor, granularity: str) -> torch.Tensor:
    """Already-pruned weights (a prunekit mask) count as pruned first (weights) or add nothing (channels)."""
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == scores.shape:
        scores = scores.masked_fill(~mask, -math.inf if granularity == "layer" else 0.0)
    return scores


def layer_macs(model: nn.Module, batch_inputs: Any, names: Sequence[str]) -> dict[str, int]:
    """Per-example multiply-accumulates of each named Linear/Conv layer, from one recorded forward."""
    modules = dict(model.named_modules())
    macs: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or name in macs:
                return
            w = _weight(module)  # every output element costs one dot product over w[0]
            macs[name] = out.numel() * w[0].numel() // max(1, n_examples)

        return fn

    n_examples = batch_size(batch_inputs)
    for name in names:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), _EvalMode(model):
            call_model(model, to_device(batch_inputs, _device(model)))
    finally:
        for h in handles:
            h.remove()
    return {n: macs.get(n, 0) for n in names}


# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
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
        raise ModuleNotFound(f"no layer {name!r} in this sensitivity result; analysed layers: {self.names}")

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


# ----------------------------------------------------------------------------------------------
# The analysis.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SensitivityConfig:
    """Settings of :func:`sensitivity` (every keyword of the function, validated).

    Attributes:
        ratios: pruning ratios to measure, each in (0, 1).
        criterion: what to prune within a layer: ``magnitude``, ``l2``, ``random``, ``taylor``,
            ``fisher``, or a :class:`SensitivityCriterion` callable.
        granularity: ``"layer"`` prunes single weights, ``"channel"`` whole output channels
            (weight rows and bias entries), ``"head"`` one whole attention head at a time.
        max_batches: use at most this many batches of ``data`` (they are cached once).
        estimate: also compute the one-pass Taylor/Fisher estimates.
        include: module names/globs/types to analyse (default: every Linear/Conv).
        exclude: module names/globs/types to skip.
        progress: show a progress bar over layers.
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    criterion: Any = "magnitude"
    granularity: str = "layer"
    max_batches: int | None = None
    estimate: bool = True
    include: tuple[Any, ...] | None = None
    exclude: tuple[Any, ...] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        if not ratios:
            raise ConfigError("ratios must hold at least one pruning ratio in (0, 1), e.g. (0.1, 0.5, 0.9)")
        if any(not 0.0 < r < 1.0 for r in ratios):
            raise ConfigError(f"every ratio must be in (0, 1), got {ratios}")
        if len(set(ratios)) != len(ratios):
            raise ConfigError(f"ratios must be distinct, got {ratios}")
        object.__setattr__(self, "ratios", tuple(sorted(ratios)))
        if self.granularity not in GRANULARITIES:
            raise ConfigError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ConfigError(f"max_batches must be a positive integer or None, got {self.max_batches!r}")
        resolve_criterion(self.criterion)


def _one_pass(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean gradient and empirical Fisher diagonal of every layer's weight, without touching ``.grad``."""
    return grad_stats(model, [_weight(m) for _, m in layers], batches, loss_fn)


def grad_stats(
    model: nn.Module,
    weights: Sequence[torch.Tensor],
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean gradient and empirical Fisher diagonal of each tensor in ``weights``, without touching ``.grad``."""
    flags: list[bool] = [bool(w.requires_grad) for w in weights]
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    device = _device(model)
    total = sum(batch_size(i, t) for i, t in batches)
    try:
        for w in weights:
            w.requires_grad_(True)
        for inputs, targets in batches:
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with torch.enable_grad():
                loss = loss_fn(call_model(model, inputs), targets)
                gs = torch.autograd.grad(loss, weights, allow_unused=True)
            n = batch_size(inputs, targets)
            for g_sum, f_sum, g in zip(grads, fisher, gs, strict=False):
                if g is not None:
                    g_sum.add_(g.float(), alpha=n / total)
                    f_sum.add_(g.float().square(), alpha=1.0 / len(batches))
    finally:
        for w, flag in zip(weights, flags, strict=False):
            w.requires_grad_(flag)
    return grads, fisher


def sensitivity(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str | SensitivityCriterion = "magnitude",
    granularity: Granularity = "layer",
    metric: Callable[[Any, Any], Any] | None = None,
    max_batches: int | None = None,
    estimate: bool = True,
    include: Iterable[Any] | None = None,
    exclude: Iterable[Any] | None = None,
    progress: bool = True,
    config: SensitivityConfig | None = None,
) -> SensitivityResult:
    """Measure how the loss grows when each prunable layer alone is pruned; the model ends bit-identical.

    Every layer is pruned at each ratio in place, evaluated on the cached validation batches, and
    restored from a copy of that one layer's weight (and bias, for channels). Gradients (``.grad``),
    ``requires_grad`` flags, train/eval modes and masks are left exactly as they were.

    Args:
        model: the model to analyse (not modified).
        data: a DataLoader or any iterable of ``(inputs, targets)``; ``inputs`` may be a tensor,
            a tuple of positional arguments or a dict of keyword arguments.
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar mean loss of a batch.
        ratios: pruning ratios in (0, 1) to measure.
        criterion: ``magnitude`` (default), ``l2``, ``random``, ``taylor``, ``fisher`` or a callable.
        granularity: ``"layer"`` (single weights), ``"channel"`` (output channels) or ``"head"``
            (whole attention heads, found by the structured dependency graph; one row per head named
            ``<attention module>/head<i>``, measured with the head zeroed, i.e. at ratio 1.0;
            ``ratios`` and ``criterion`` are then unused).
        metric: optional ``metric(outputs, targets)`` -> float (e.g. accuracy), averaged per example.
        max_batches: use at most this many batches of ``data``; they are read once and kept in
            memory (every layer and ratio is evaluated on the same batches).
        estimate: compute the one-pass Taylor/Fisher estimates and their rank correlation.
        include: module names/globs/types to analyse (default: every Linear/Conv layer).
        exclude: module names/globs/types to skip.
        progress: show a tqdm progress bar over layers.
        config: a :class:`SensitivityConfig`; when given it replaces every keyword above.

    Returns:
        A :class:`SensitivityResult` (``to_dict``, ``to_csv``, ``plot``, ``ranking``).

    Raises:
        DataRequiredError: ``data`` is missing or empty.
        ConfigError: a ratio, granularity, criterion or batch is invalid.
        ModuleNotFound: an ``include``/``exclude`` entry matches no module.

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
        >>> res = pk.sensitivity(model, data, torch.nn.functional.cross_entropy, ratios=(0.5,), progress=False)
        >>> res.names
        ['0', '2']
    """
    cfg = config or SensitivityConfig(
        ratios=tuple(ratios),
        criterion=criterion,
        granularity=granularity,
        max_batches=max_batches,
        estimate=estimate,
        include=None if include is None else tuple(include),
        exclude=None if exclude is None else tuple(exclude),
        progress=progress,
    )
    crit_name, crit = resolve_criterion(cfg.criterion)
    if cfg.granularity == "head":
        return _sensitivity_heads(model, data, loss_fn, metric, cfg)
    layers = select_layers(model, cfg.include, cfg.exclude)
    if not layers:
        raise ModuleNotFound(
            f"no prunable layer (Linear/Conv weight) selected in {type(model).__name__}; check include=/exclude="
        )
    batches = take_batches(data, cfg.max_batches, "sensitivity analysis")
    metric_name = getattr(metric, "__name__", "metric") if metric is not None else "metric"

    from tqdm.auto import tqdm

    with _EvalMode(model):
        macs = layer_macs(model, batches[0][0], [n for n, _ in layers])
        base_loss, base_metric = evaluate(model, batches, loss_fn, metric)
        needs_grad = cfg.estimate or crit_name in ("taylor", "fisher") or not isinstance(cfg.criterion, str)
        if needs_grad:
            grads, fishers = _one_pass(model, layers, batches, loss_fn)
        else:
            grads = fishers = [torch.zeros(0) for _ in layers]
        results: list[LayerSensitivity] = []
        for (name, module), grad, fish in tqdm(
            list(zip(layers, grads, fishers, strict=False)),
            desc="sensitivity",
            unit="layer",
            disable=not cfg.progress,
        ):
            results.append(
                _analyse_layer(
                    model, name, module, grad, fish, crit, cfg, batches, loss_fn, metric, macs[name]
                )
            )

    rho, rho_per = _rank_correlations(results, base_loss, cfg.estimate)
    return SensitivityResult(
        layers=tuple(results),
        baseline_loss=base_loss,
        baseline_metric=base_metric,
        metric_name=metric_name,
        criterion=crit_name,
        granularity=cfg.granularity,
        rank_correlation=rho,
        rank_correlation_per_ratio=rho_per,
    )


def _rank_correlations(
    results: Sequence[LayerSensitivity], base_loss: float, estimate: bool
) -> tuple[dict[str, float], dict[str, tuple[float, ...]]]:
    rho: dict[str, float] = {}
    rho_per: dict[str, tuple[float, ...]] = {}
    if estimate and len(results) >= 2:
        deltas = [[v - base_loss for v in la.loss] for la in results]
        for est in ESTIMATORS:
            curves = [list(getattr(la, est)) for la in results]
            rho_per[est] = tuple(
                spearman([c[i] for c in curves], [d[i] for d in deltas])
                for i in range(len(results[0].ratios))
            )
            rho[est] = spearman([sum(c) for c in curves], [sum(d) for d in deltas])
    return rho, rho_per


def _sensitivity_heads(
    model: nn.Module,
    data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any],
    metric: Callable[[Any, Any], Any] | None,
    cfg: SensitivityConfig,
) -> SensitivityResult:
    """``granularity="head"``: one row per attention head (see :mod:`prunekit.head_sensitivity`)."""
    from prunekit.head_sensitivity import analyse_heads

    batches = take_batches(data, cfg.max_batches, "head sensitivity analysis")
    metric_name = getattr(metric, "__name__", "metric") if metric is not None else "metric"
    with _EvalMode(model):
        base_loss, base_metric = evaluate(model, batches, loss_fn, metric)
        rows, _ = analyse_heads(
            model,
            batches,
            loss_fn,
            metric,
            estimate=cfg.estimate,
            include=cfg.include,
            exclude=cfg.exclude,
            progress=cfg.progress,
        )
    rho, rho_per = _rank_correlations(rows, base_loss, cfg.estimate)
    return SensitivityResult(
        layers=tuple(rows),
        baseline_loss=base_loss,
        baseline_metric=base_metric,
        metric_name=metric_name,
        criterion="zero-head",
        granularity="head",
        rank_correlation=rho,
        rank_correlation_per_ratio=rho_per,
    )


def _analyse_layer(
    model: nn.Module,
    name: str,
    module: nn.Module,
    grad: torch.Tensor,
    fisher: torch.Tensor,
    crit: SensitivityCriterion,
    cfg: SensitivityConfig,
    batches: Sequence[tuple[Any, Any]],
    loss_fn: Callable[[Any, Any], Any],
    metric: Callable[[Any, Any], Any] | None,
    macs: int,
) -> LayerSensitivity:
    weight = _weight(module)
    bias = getattr(module, "bias", None)
    channel = cfg.granularity == "channel"
    with torch.no_grad():
        scores = crit(weight.detach(), name=name, grad=grad, fisher=fisher).float()
        scores = _masked_scores(module, scores, cfg.granularity)
        taylor_el = (grad * weight.detach().float()).abs() if cfg.estimate else None
        fisher_el = 0.5 * fisher * weight.detach().float().square() if cfg.estimate else None
        saved_w = weight.detach().clone()
        saved_b = bias.detach().clone() if channel and isinstance(bias, torch.Tensor) else None
    losses: list[float] = []
    metrics: list[float] = []
    taylor: list[float] = []
    fisher_est: list[float] = []
    try:
        for r in cfg.ratios:
            keep = keep_mask(scores, r, cfg.granularity)
            with torch.no_grad():
                weight.mul_(keep)
                if saved_b is not None and bias is not None:
                    bias.mul_(keep.reshape(keep.shape[0], -1)[:, 0])
            loss, met = evaluate(model, batches, loss_fn, metric)
            with torch.no_grad():
                weight.copy_(saved_w)
                if saved_b is not None and bias is not None:
                    bias.copy_(saved_b)
            losses.append(loss)
            if met is not None:
                metrics.append(met)
            if taylor_el is not None and fisher_el is not None:
                taylor.append(float(taylor_el[~keep].sum()))
                fisher_est.append(float(fisher_el[~keep].sum()))
    finally:
        with torch.no_grad():
            weight.copy_(saved_w)
            if saved_b is not None and bias is not None:
                bias.copy_(saved_b)
    return LayerSensitivity(
        name=name,
        kind=type(module).__name__,
        numel=weight.numel(),
        units=weight.shape[0] if channel else weight.numel(),
        macs=macs,
        ratios=cfg.ratios,
        loss=tuple(losses),
        metric=tuple(metrics) if metric is not None else None,
        taylor=tuple(taylor) if cfg.estimate else None,
        fisher=tuple(fisher_est) if cfg.estimate else None,
    )


def iter_curve(
    result: SensitivityResult, name: str, source: str = "measured"
) -> Iterator[tuple[float, float]]:
    """``(ratio, predicted loss increase)`` points of a layer, starting at ``(0, 0)``.

    ``source`` is ``"measured"`` (default) or an estimator name (``"taylor"``, ``"fisher"``).
    """
    la = result.layer(name)
    if source == "measured":
        values: Sequence[float] = [v - result.baseline_loss for v in la.loss]
    elif source in ESTIMATORS:
        est = getattr(la, source)
        if est is None:
            raise ConfigError(
                f"the sensitivity result has no {source!r} estimate; run sensitivity(..., estimate=True)"
            )
        values = est
    else:
        raise ConfigError(
            f"unknown curve source {source!r}; expected 'measured', {', '.join(map(repr, ESTIMATORS))}"
        )
    yield 0.0, 0.0
    yield from zip(la.ratios, values, strict=False)


__all__ = [
    "CRITERIA",
    "DEFAULT_RATIOS",
    "LayerSensitivity",
    "SensitivityConfig",
    "SensitivityCriterion",
    "SensitivityResult",
    "evaluate",
    "iter_curve",
    "keep_mask",
    "select_layers",
    "sensitivity",
    "spearman",
]
