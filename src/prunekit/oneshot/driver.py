"""The block loop shared by in-memory and streamed pruning: statistics, solve, write, propagate.

A ``load(i, final)`` / ``unload(i, final)`` pair lets the streamed path bring block ``i``'s tensors in from disk
just before it is needed and write them out right after; the in-memory path passes neither.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.core import Skipped, is_hf_conv1d, set_mask
from prunekit.errors import ConfigError, PatternError, UnknownModuleError
from prunekit.oneshot.config import OneShotConfig
from prunekit.oneshot.engine import Batch, LayerStats, block_statistics, propagate
from prunekit.oneshot.methods import magnitude, masked_error, sparsegpt, wanda
from prunekit.oneshot.owl import outliers, owl_sparsities
from prunekit.oneshot.refit import augment, refit_cg
from prunekit.oneshot.result import OneShotLayer

Hook = Callable[[int, bool], None]  # (block index, final): final is False in OWL's dense pre-pass
REFIT_ITERATIONS = 30  # conjugate-gradient steps of the refit (25 already match the exact optimum on MiniLM)


@dataclass(frozen=True)
class Plan:
    """The layers of every block to prune and each one's sparsity (validated before any change)."""

    blocks: Sequence[nn.Module]
    layers: Sequence[Mapping[str, nn.Module]]  # per block: {model name: module}
    sparsity: Mapping[str, float]


def weight_of(module: nn.Module) -> nn.Parameter:
    """``module.weight`` (a Linear / Conv1D weight parameter)."""
    w = module.weight
    assert isinstance(w, nn.Parameter)
    return w


def bias_of(module: nn.Module) -> nn.Parameter | None:
    """``module.bias`` if it is a parameter."""
    b = getattr(module, "bias", None)
    return b if isinstance(b, nn.Parameter) else None


def as_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as ``(out, in)`` float32 (GPT-2 ``Conv1D`` stores ``(in, out)``)."""
    w = weight_of(module).detach()
    return (w.T if is_hf_conv1d(module) else w).to(torch.float32, copy=True)


def layer_sparsities(cfg: OneShotConfig, names: Sequence[str]) -> dict[str, float]:
    """Each layer's sparsity from ``cfg.layer_ratios`` (a mapping) or the uniform target.

    A key is a module name, an fnmatch glob or a parent module (a block) name; the longest
    matching key wins.

    Raises:
        UnknownModuleError: a key matches no pruned layer.
    """
    target = cfg.target_sparsity
    ratios = cfg.layer_ratios
    out = {n: target for n in names}
    if not isinstance(ratios, Mapping):
        return out
    used: set[str] = set()
    for n in names:
        best: str | None = None
        for key in ratios:
            if n == key or n.startswith(key + ".") or fnmatch.fnmatchcase(n, key):
                if best is None or len(key) > len(best):
                    best = key
        if best is not None:
            out[n] = float(ratios[best])
            used.add(best)
    unused = [k for k in ratios if k not in used]
    if unused:
        raise UnknownModuleError(
            f"layer_ratios key(s) {unused} match no pruned layer; keys are module names, globs or block "
            f"names such as {names[0]!r}"
        )
    return out


def check_plan(cfg: OneShotConfig, plan: Plan) -> None:
    """Every layer can take the pattern and its sparsity (before anything is changed)."""
    nm = cfg.nm
    for layers in plan.layers:
        for name, module in layers.items():
            shape = _meta_shape(module)
            if nm is not None and shape[1] % nm[1]:
                raise PatternError(
                    f"{name!r} (weight {shape} as (out, in)) cannot take pattern {cfg.pattern!r}: its {shape[1]} "
                    f"inputs are not a multiple of M={nm[1]}. Leave it dense with exclude=[{name!r}]"
                )
            if nm is not None and plan.sparsity[name] < 1 - nm[0] / nm[1] - 1e-9:
                raise ConfigError(
                    f"layer_ratios gives {name!r} sparsity {plan.sparsity[name]}, below pattern {cfg.pattern!r}'s "
                    f"{1 - nm[0] / nm[1]:g}"
                )


def _meta_shape(module: nn.Module) -> tuple[int, int]:
    shape = tuple(weight_of(module).shape)
    return (shape[1], shape[0]) if is_hf_conv1d(module) else (shape[0], shape[1])


def solve(
    cfg: OneShotConfig,
    name: str,
    weight: torch.Tensor,
    stats: LayerStats,
    sparsity: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(new weight, keep mask, new bias or None)`` of one ``(out, in)`` weight by ``cfg.method``."""
    nm = cfg.nm
    h = stats.hessian
    if cfg.method == "magnitude":
        keep = magnitude(weight, sparsity, nm)
        return weight * keep, keep, None
    if cfg.method == "wanda":
        keep = wanda(weight, h, sparsity, nm)
        return weight * keep, keep, None
    opts = {"block_size": cfg.block_size, "dampening": cfg.dampening, "name": name}
    if cfg.method == "sparsegpt":
        new, keep = sparsegpt(weight, h, sparsity, nm, **opts)  # type: ignore[arg-type]
        return new, keep, None
    return refit_solve(cfg, weight, stats, sparsity, bias, opts)


def refit_solve(
    cfg: OneShotConfig,
    weight: torch.Tensor,
    stats: LayerStats,
    sparsity: float,
    bias: torch.Tensor | None,
    opts: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The ``"refit"`` method: SparseGPT's mask, then the least-squares optimum of the kept weights.

    A bias joins the solve as one more never-pruned weight on a constant input, so it absorbs
    the mean of the pruning error. The optimum is reached by conjugate gradients warm-started
    from SparseGPT's own update (the exact Cholesky :func:`~prunekit.oneshot.refit.refit` gives
    the same weights, much more slowly on wide layers).
    """
    nm = cfg.nm
    h = stats.hessian
    cols = weight.shape[1]
    if bias is not None and stats.total is not None:
        w_aug, h_aug = augment(weight, bias, h, stats.total, stats.tokens)
        new, keep = sparsegpt(w_aug, h_aug, sparsity, nm, tail=1, **opts)
        new = refit_cg(w_aug, h_aug, keep, new, dampening=cfg.dampening, iterations=REFIT_ITERATIONS)
        return new[:, :cols], keep[:, :cols], new[:, cols]
    new, keep = sparsegpt(weight, h, sparsity, nm, **opts)
    new = refit_cg(weight, h, keep, new, dampening=cfg.dampening, iterations=REFIT_ITERATIONS)
    return new, keep, None


def prune_layer(
    cfg: OneShotConfig, block: int, name: str, module: nn.Module, stats: LayerStats, sparsity: float
) -> OneShotLayer:
    """Solve one layer and write its new weights and mask (``prunekit.core.set_mask``) in place."""
    start = time.perf_counter()
    w0 = as_matrix(module)
    if sparsity == 0.0 and cfg.nm is None:  # the identity: do not touch the weights at all
        new, keep = w0, torch.ones_like(w0, dtype=torch.bool)
    else:
        bias = bias_of(module)
        new, keep, new_bias = solve(cfg, name, w0, stats, sparsity, bias)
        new = new.masked_fill(~keep, 0.0)
        conv = is_hf_conv1d(module)
        with torch.no_grad():
            weight_of(module).copy_(new.T if conv else new)
            if new_bias is not None and bias is not None:
                bias.copy_(new_bias)
        set_mask(module, "weight", keep.T if conv else keep)
    h = stats.hessian
    zeros = int((~keep).sum())
    return OneShotLayer(
        name=name,
        block=block,
        shape=tuple(weight_of(module).shape),
        numel=keep.numel(),
        zeros=zeros,
        target=sparsity,
        error_mask=masked_error(w0, w0 * keep, h),
        error=masked_error(w0, new, h),
        seconds=time.perf_counter() - start,
    )


def owl_block_sparsities(
    cfg: OneShotConfig,
    plan: Plan,
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
    load: Hook | None,
    unload: Hook | None,
) -> list[float]:
    """OWL's per-block sparsities from a dense pass over the calibration data."""
    ratios: list[float] = []
    state = list(hidden)
    for i, block in enumerate(plan.blocks):
        if load is not None:
            load(i, False)
        stats = block_statistics(block, plan.layers[i], batches, state)
        count = total = 0
        for name, module in plan.layers[i].items():
            if name not in stats:
                continue
            w = as_matrix(module)
            count += outliers(w, stats[name].hessian.diagonal(), cfg.owl_threshold)
            total += w.numel()
        ratios.append(count / total if total else 0.0)
        state = propagate(block, batches, state)
        if unload is not None:
            unload(i, False)
    nm = cfg.nm
    floor = 1 - nm[0] / nm[1] if nm is not None else 0.0
    return owl_sparsities(ratios, cfg.target_sparsity, cfg.owl_lambda, floor)


def run_blocks(
    cfg: OneShotConfig,
    plan: Plan,
    batches: Sequence[Batch],
    hidden: Sequence[torch.Tensor],
    *,
    load: Hook | None = None,
    unload: Hook | None = None,
) -> tuple[list[OneShotLayer], list[Skipped]]:
    """Prune ``plan``'s blocks one after the other, propagating the pruned outputs.

    Returns:
        ``(pruned layers, layers skipped because the calibration data never reached them)``.
    """
    from tqdm.auto import tqdm

    sparsity = dict(plan.sparsity)
    if cfg.layer_ratios == "owl":
        per_block = owl_block_sparsities(cfg, plan, batches, hidden, load, unload)
        for i, layers in enumerate(plan.layers):
            for name in layers:
                sparsity[name] = per_block[i]
    state = list(hidden)
    results: list[OneShotLayer] = []
    skipped: list[Skipped] = []
    bar = tqdm(plan.blocks, desc=f"oneshot {cfg.method}", unit="block", disable=not cfg.progress)
    for i, block in enumerate(bar):
        if load is not None:
            load(i, True)
        stats = block_statistics(block, plan.layers[i], batches, state)
        for name, module in plan.layers[i].items():
            if name not in stats:
                skipped.append(Skipped(name, "not run by the calibration data (no statistics)"))
                continue
            results.append(prune_layer(cfg, i, name, module, stats[name], sparsity[name]))
        del stats
        state = propagate(block, batches, state)
        if unload is not None:
            unload(i, True)
    return results, skipped


__all__ = [
    "Plan",
    "as_matrix",
    "bias_of",
    "weight_of",
    "check_plan",
    "layer_sparsities",
    "owl_block_sparsities",
    "prune_layer",
    "run_blocks",
    "solve",
]
