"""Calibration-aware structured pruning: remove MLP channels and attention heads, block by block, compensated.

::

    data ──► block-0 inputs (engine) ──► graph groups per block (MLP channels, heads / KV groups)
    [budget: one dense pass: per-unit error estimates ──► allocate() units per group]
    for each block b:                                    (pruned outputs propagate)
        heads:  stats of the out-projection input ──► score ──► drop units ──► compensate + zero columns
        MLP:    stats of the down-projection input ──► score ──► drop units ──► compensate + zero columns
        x ──► block b (pruned) ──► x of block b+1
    prune_channels(ratio={producer: k/n}, criterion=the chosen units)   physical removal, oracle-checked

Compensation (:mod:`prunekit.oneshot.compensate`): ``"bias"`` adds the mean of what went to the
consumer's bias (FLAP), ``"refit"`` solves the consumer's kept columns and bias by exact least squares on
the calibration statistics, ``"none"`` only removes. Zeroing the removed columns of the consumer makes
the masked block compute exactly what the physically pruned block computes, so the final removal is
checked against it. On any failure the model is restored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.core import UNSET, count_params, merge_config, take_inputs
from prunekit.errors import ConfigError, PlanError, PrunekitError
from prunekit.graph import Group, build_graph, record
from prunekit.io import is_hf_model, sync_hf_config
from prunekit.oneshot.api import eval_mode
from prunekit.oneshot.budget import UnitGroup, allocate, ratio_counts, unit_groups
from prunekit.oneshot.compensate import bias_compensation, column_scores, refit_columns, removal_error
from prunekit.oneshot.driver import bias_of, weight_of
from prunekit.oneshot.engine import (
    Batch,
    LayerStats,
    block_statistics,
    capture_inputs,
    find_blocks,
    is_linear,
    propagate,
)
from prunekit.oneshot.structured_types import (
    StructuredGroup,
    StructuredOneShotConfig,
    StructuredOneShotResult,
)
from prunekit.structured import prune_channels

logger = logging.getLogger(__name__)


class ChosenUnits:
    """A channel criterion scoring the chosen units of each consumer 0 and the others 1."""

    name = "chosen-units"
    needs_grad = False

    def __init__(self, removed: Mapping[str, np.ndarray]) -> None:
        self.removed = dict(removed)  # consumer weight name -> removed column mask (in,)

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        scores = torch.ones(group.n_units, dtype=torch.float64)
        for m in group.members:
            cols = self.removed.get(m.name)
            if cols is None or m.dim != 1 or len(cols) != len(m.units):
                continue
            units = np.unique(np.asarray(m.units)[cols & (np.asarray(m.units) >= 0)])
            scores[torch.from_numpy(units)] = 0.0
        return scores


def _stats_for(
    block: nn.Module,
    names: Sequence[str],
    modules: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
) -> dict[str, LayerStats]:
    stats = block_statistics(block, {n: modules[n] for n in names}, batches, hidden)
    missing = [n for n in names if n not in stats]
    if missing:
        raise PlanError(f"the calibration forward never reached {missing}; cannot score their inputs")
    return stats


def _unit_errors(
    g: UnitGroup, weight: torch.Tensor, st: LayerStats, compensated: bool, scale: float
) -> np.ndarray:
    return g.unit_sums(removal_error(weight, st, compensated)) / max(scale, 1e-30)


def _stream_energy(hidden: Sequence[torch.Tensor]) -> float:
    num = sum(float(h.float().square().sum()) for h in hidden)
    den = sum(h.numel() // h.shape[-1] for h in hidden)
    return num / max(den, 1)


def _compensate(
    g: UnitGroup, module: nn.Module, st: LayerStats, removed_units: np.ndarray, cfg: StructuredOneShotConfig
) -> StructuredGroup:
    weight = weight_of(module)
    bias = bias_of(module)
    cols = g.column_mask(removed_units)
    keep = ~cols
    w0 = weight.detach().to(torch.float32).clone()
    b0 = bias.detach().to(torch.float32).clone() if bias is not None else None
    compensated = "none"
    with torch.no_grad():
        if cfg.method == "refit":
            new_w, new_b = refit_columns(w0, b0, st, keep, dampening=cfg.dampening)
            weight.copy_(new_w.to(weight.dtype))
            if bias is not None and new_b is not None:
                bias.copy_(new_b.to(bias.dtype))
            compensated = "refit" if bias is not None else "refit (no bias)"
        else:
            if cfg.method == "bias" and bias is not None and bool(cols.any()):
                bias.add_(bias_compensation(w0, st, cols).to(bias.dtype))
                compensated = "bias"
            weight[:, cols] = 0.0
    error = _relative_error(
        w0, b0, weight.detach().float(), bias.detach().float() if bias is not None else None, st
    )
    return StructuredGroup(
        name=g.producer,
        kind=g.kind,
        block=g.block,
        before=g.n_units,
        after=g.n_units - len(removed_units),
        compensation=compensated,
        error=error,
    )


def _relative_error(
    w0: torch.Tensor, b0: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor | None, st: LayerStats
) -> float:
    """``E||Δ(W a + b)||² / E||W a + b||²`` of the consumer on its calibration inputs."""
    n = w0.shape[1]
    g = torch.zeros(n + 1, n + 1)
    g[:n, :n] = st.hessian
    if st.total is not None:
        g[:n, n] = st.total
        g[n, :n] = st.total
    g[n, n] = float(st.tokens)
    zero = torch.zeros(w0.shape[0], 1)
    a0 = torch.cat([w0, b0.reshape(-1, 1) if b0 is not None else zero], 1)
    a1 = torch.cat([w1, b1.reshape(-1, 1) if b1 is not None else zero], 1)
    d = a0 - a1
    num = float(((d @ g) * d).sum())
    den = float(((a0 @ g) * a0).sum())
    return num / den if den > 0 else 0.0


def _misfit(model: nn.Module, e: Exception) -> PrunekitError:
    return PrunekitError(
        f"the calibration data does not fit {type(model).__name__}: {type(e).__name__}: {e}. Pass batches "
        "that model(**batch) / model(batch) accepts (e.g. a tokenizer's output); the model is unchanged"
    )


def prune_structured_oneshot(
    model: nn.Module,
    data: Iterable[Any],
    ratio: float | Mapping[str, float] = UNSET,
    *,
    what: Sequence[str] = UNSET,
    method: str = UNSET,
    criterion: str = UNSET,
    budget: float | None = UNSET,
    budget_metric: str = UNSET,
    round_to: int | None = UNSET,
    max_batches: int | None = UNSET,
    dampening: float = UNSET,
    gqa: str = UNSET,
    max_layer_ratio: float = UNSET,
    check: bool = UNSET,
    config: StructuredOneShotConfig | None = None,
) -> StructuredOneShotResult:
    """Remove MLP channels and attention heads of a transformer in place, block by block, with compensation.

    Args:
        model: a transformer (blocks in an ``nn.ModuleList``: ``encoder.layer``, ``model.layers``, ...).
        data: calibration batches (token-id tensors or tokenizer dicts; padding tokens are left out).
        ratio: fraction of units removed per group, or ``{"mlp": r, "heads": r}``.
        what: ``("mlp", "heads")`` or one of them.
        method: ``"refit"`` (least squares), ``"bias"`` (FLAP mean) or ``"none"``.
        criterion: ``"activation"``, ``"fluctuation"`` or ``"weight"`` (see :func:`column_scores`).
        budget: instead of ``ratio``: remove this fraction of the blocks' params/MACs, allocated per layer.
        budget_metric: ``"params"`` or ``"macs"``.
        round_to: MLP groups keep a multiple of this many channels.
        max_batches: use at most this many calibration batches.
        dampening: ridge of the refit relative to the mean diagonal of the kept Gram block.
        gqa: ``"kv_groups"`` or ``"query_heads"``, as in ``prune_channels``.
        max_layer_ratio: with ``budget``, at most this fraction of any group goes.
        check: oracle-check the physical removal against the masked model.
        config: a :class:`StructuredOneShotConfig` instead of the keywords.

    Returns:
        A :class:`StructuredOneShotResult`.

    Raises:
        ConfigError: bad options, or no transformer block with prunable groups.
        DataRequiredError: no calibration data.
        PlanError: an impossible budget or ratio. The model is left untouched on every error.
        PrunekitError: a calibration batch does not fit the model.
    """
    t0 = time.perf_counter()
    cfg = merge_config(
        StructuredOneShotConfig,
        config,
        verb="prune_structured_oneshot",
        ratio=ratio,
        what=what,
        method=method,
        criterion=criterion,
        budget=budget,
        budget_metric=budget_metric,
        round_to=round_to,
        max_batches=max_batches,
        dampening=dampening,
        gqa=gqa,
        max_layer_ratio=max_layer_ratio,
        check=check,
    )
    blocks_name, blocks = find_blocks(model)
    raw = take_inputs(data, cfg.max_batches, "prune_structured_oneshot")
    modules = dict(model.named_modules())
    linear_names = {n for n, m in modules.items() if is_linear(m)}
    params_before = count_params(model)
    block_params = sum(p.numel() for p in blocks.parameters())
    with eval_mode(model):
        batches, hidden = capture_inputs(model, blocks[0], raw, None)
        try:
            graph = build_graph(record(model, raw[0]), prune_heads=True, gqa=cfg.gqa)
        except PrunekitError:
            raise
        except Exception as e:
            raise _misfit(model, e) from e
    groups = unit_groups(graph, blocks_name, len(blocks), linear_names, cfg.what)
    if not groups:
        raise ConfigError(
            f"no MLP channel or attention head group found inside the blocks '{blocks_name}' of "
            f"{type(model).__name__} (what={list(cfg.what)}): nothing calibration-compatible to prune"
        )
    saved = {}
    for g in groups:
        for pname, p in modules[g.consumer].named_parameters(recurse=False):
            saved[f"{g.consumer}.{pname}"] = (p, p.detach().clone())
    try:
        with eval_mode(model):
            counts = _counts(cfg, groups, blocks, modules, batches, hidden, block_params)
            records, removed_cols = _run(cfg, groups, counts, blocks, modules, batches, hidden)
            ratios = {
                g.producer: (counts[g.gid] + 0.5) / g.n_units for g in groups if counts.get(g.gid, 0) > 0
            }
            plan: dict[str, Any] = {}
            if ratios:
                res = prune_channels(
                    model,
                    raw[0],
                    ratio=ratios,
                    criterion=ChosenUnits(removed_cols),
                    prune_heads=True,
                    gqa=cfg.gqa,
                    check=cfg.check,
                )
                plan = res.plan
    except BaseException as e:
        with torch.no_grad():
            for p, old in saved.values():
                if tuple(p.shape) == tuple(old.shape):
                    p.copy_(old)
        if isinstance(e, Exception) and not isinstance(e, PrunekitError):
            raise _misfit(model, e) from e
        raise
    synced: bool | None = None
    if is_hf_model(model):
        synced = sync_hf_config(model, strict=False).expressible
    return StructuredOneShotResult(
        config=cfg,
        groups=tuple(records),
        params_before=params_before,
        params_after=count_params(model),
        block_params_before=block_params,
        block_params_after=sum(p.numel() for p in blocks.parameters()),
        plan=plan,
        hf_config_synced=synced,
        seconds=time.perf_counter() - t0,
    )


def _counts(
    cfg: StructuredOneShotConfig,
    groups: Sequence[UnitGroup],
    blocks: nn.ModuleList,
    modules: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
    block_params: int,
) -> dict[int, int]:
    if cfg.budget is None:
        return ratio_counts(groups, cfg.kind_ratios(), cfg.round_to)
    compensated = cfg.method != "none"
    errors: dict[int, np.ndarray] = {}
    state = list(hidden)
    total = block_params
    if cfg.budget_metric == "macs":  # per-token MACs of the blocks' Linear layers
        total = sum(weight_of(m).numel() for m in blocks.modules() if is_linear(m))
    for b, block in enumerate(blocks):
        mine = [g for g in groups if g.block == b]
        if mine:
            stats = _stats_for(block, sorted({g.consumer for g in mine}), modules, batches, state)
            scale = _stream_energy(state)
            for g in mine:
                w = weight_of(modules[g.consumer])
                errors[g.gid] = _unit_errors(g, w, stats[g.consumer], compensated, scale)
        state = propagate(block, batches, state)
    assert cfg.budget is not None
    return allocate(
        groups,
        errors,
        cfg.budget,
        metric=cfg.budget_metric,
        total=total,
        round_to=cfg.round_to,
        max_ratio=cfg.max_layer_ratio,
    )


def _run(
    cfg: StructuredOneShotConfig,
    groups: Sequence[UnitGroup],
    counts: Mapping[int, int],
    blocks: nn.ModuleList,
    modules: Mapping[str, nn.Module],
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
) -> tuple[list[StructuredGroup], dict[str, np.ndarray]]:
    records: list[StructuredGroup] = []
    removed_cols: dict[str, np.ndarray] = {}
    state = list(hidden)
    for b, block in enumerate(blocks):
        for kind in ("heads", "mlp"):  # forward order: the MLP is scored on the pruned attention's output
            mine = [g for g in groups if g.block == b and g.kind == kind and counts.get(g.gid, 0) > 0]
            if not mine:
                continue
            stats = _stats_for(block, sorted({g.consumer for g in mine}), modules, batches, state)
            for g in mine:
                module = modules[g.consumer]
                st = stats[g.consumer]
                scores = g.unit_sums(column_scores(weight_of(module), st, cfg.criterion))
                drop = np.sort(np.argsort(scores, kind="stable")[: counts[g.gid]])
                records.append(_compensate(g, module, st, drop, cfg))
                removed_cols[f"{g.consumer}.weight"] = g.column_mask(drop).numpy()
        state = propagate(block, batches, state)
    return records, removed_cols


__all__ = ["ChosenUnits", "prune_structured_oneshot"]
