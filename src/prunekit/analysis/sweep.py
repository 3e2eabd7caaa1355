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

This module holds the verb, its config and :func:`iter_curve`; batches and :func:`evaluate` live in
:mod:`prunekit.core.batches`, layer selection and :func:`keep_mask` in :mod:`prunekit.analysis.layers`,
criteria and one-pass estimates in :mod:`prunekit.analysis.estimates`, and
:class:`SensitivityResult` (export, plot) in :mod:`prunekit.analysis.result`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.analysis.estimates import (
    CRITERIA,
    ESTIMATORS,
    SensitivityCriterion,
    one_pass,
    resolve_criterion,
)
from prunekit.analysis.layers import keep_mask, layer_macs, masked_scores, select_layers
from prunekit.analysis.result import (
    GRANULARITIES,
    Granularity,
    LayerSensitivity,
    SensitivityResult,
    spearman,
)
from prunekit.compat import renamed_kwargs
from prunekit.core import (
    UNSET,
    ConfigMixin,
    EvalMode,
    evaluate,
    loss_and_metric,
    merge_config,
    register_config,
    take_batches,
    weight_of,
)
from prunekit.errors import ConfigError, UnknownModuleError

DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@register_config
@dataclass(frozen=True, kw_only=True)
class SensitivityConfig(ConfigMixin):
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
    granularity: Granularity = "layer"
    max_batches: int | None = None
    estimate: bool = True
    include: tuple[Any, ...] | None = None
    exclude: tuple[Any, ...] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(
                    self, name, tuple(value) if not isinstance(value, (str, type, nn.Module)) else (value,)
                )
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


@renamed_kwargs(data="eval_data")
def sensitivity(
    model: nn.Module,
    eval_data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Any],
    *,
    ratios: Sequence[float] = UNSET,
    criterion: str | SensitivityCriterion = UNSET,
    granularity: Granularity = UNSET,
    metric: Callable[[Any, Any], Any] | None = None,
    max_batches: int | None = UNSET,
    estimate: bool = UNSET,
    include: Iterable[Any] | None = UNSET,
    exclude: Iterable[Any] | None = UNSET,
    progress: bool = UNSET,
    config: SensitivityConfig | None = None,
) -> SensitivityResult:
    """Measure how the loss grows when each prunable layer alone is pruned; the model ends bit-identical.

    Every layer is pruned at each ratio in place, evaluated on the cached validation batches, and
    restored from a copy of that one layer's weight (and bias, for channels). Gradients (``.grad``),
    ``requires_grad`` flags, train/eval modes and masks are left exactly as they were.

    Args:
        model: the model to analyse (not modified).
        eval_data: evaluation data (``data=`` is the deprecated spelling): a DataLoader or any iterable
            of ``(inputs, targets)``; ``inputs`` may be a tensor, a tuple of positional arguments or a
            dict of keyword arguments.
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
        config: a :class:`SensitivityConfig` holding every option above but ``metric``; a keyword that
            sets the same option as ``config`` raises ``ConfigError``.

    Returns:
        A :class:`SensitivityResult` (``to_dict``, ``to_csv``, ``plot``, ``ranking``).

    Raises:
        DataRequiredError: ``data`` is missing or empty.
        ConfigError: a ratio, granularity, criterion or batch is invalid.
        UnknownModuleError: an ``include``/``exclude`` entry matches no module.

    Example:
        >>> import torch, prunekit as pk
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 2, (16,)))]
        >>> res = pk.sensitivity(model, data, torch.nn.functional.cross_entropy, ratios=(0.5,), progress=False)
        >>> res.names
        ['0', '2']
    """
    data = eval_data
    cfg = merge_config(
        SensitivityConfig,
        config,
        verb="sensitivity",
        ratios=ratios if ratios is UNSET else tuple(ratios),
        criterion=criterion,
        granularity=granularity,
        max_batches=max_batches,
        estimate=estimate,
        include=include,
        exclude=exclude,
        progress=progress,
    )
    crit_name, crit = resolve_criterion(cfg.criterion)
    if cfg.granularity == "head":
        return _sensitivity_heads(model, data, loss_fn, metric, cfg)
    layers = select_layers(model, cfg.include, cfg.exclude)
    if not layers:
        raise UnknownModuleError(
            f"no prunable layer (Linear/Conv weight) selected in {type(model).__name__}; check include=/exclude="
        )
    batches = take_batches(data, cfg.max_batches, "sensitivity analysis")
    metric_name = getattr(metric, "__name__", "metric") if metric is not None else "metric"

    from tqdm.auto import tqdm

    with EvalMode(model):
        macs = layer_macs(model, batches[0][0], [n for n, _ in layers])
        base_loss, base_metric = loss_and_metric(evaluate(model, batches, loss_fn, metric=metric))
        needs_grad = cfg.estimate or crit_name in ("taylor", "fisher") or not isinstance(cfg.criterion, str)
        if needs_grad:
            grads, fishers = one_pass(model, layers, batches, loss_fn)
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
    """``granularity="head"``: one row per attention head (see :mod:`prunekit.analysis.heads`)."""
    from prunekit.analysis.heads import analyse_heads

    batches = take_batches(data, cfg.max_batches, "head sensitivity analysis")
    metric_name = getattr(metric, "__name__", "metric") if metric is not None else "metric"
    with EvalMode(model):
        base_loss, base_metric = loss_and_metric(evaluate(model, batches, loss_fn, metric=metric))
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
    weight = weight_of(module)
    bias = getattr(module, "bias", None)
    channel = cfg.granularity == "channel"
    with torch.no_grad():
        scores = crit(weight.detach(), name=name, grad=grad, fisher=fisher).float()
        scores = masked_scores(module, scores, cfg.granularity)
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
            loss, met = loss_and_metric(evaluate(model, batches, loss_fn, metric=metric))
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
