"""Compensation of removed input channels of a consuming linear layer, from calibration statistics.

A structured removal deletes input columns ``R`` of the layer that reads them (the MLP's
down-projection, the attention output projection). With the statistics of that layer's input ``a``
over the calibration tokens (``H = Σ a aᵀ``, ``s = Σ a``, ``N`` tokens)::

    bias  (FLAP):   b' = b + W[:, R] · mean(a_R)                      the mean of what went
    refit (exact):  [W'_K | b'] = argmin Σ ||W a + b - W'_K a_K - b'||²
                               = [W | b] G[:, K'] (G[K', K'] + λI)⁻¹,  G = Σ [a;1][a;1]ᵀ, K' = K ∪ {1}

The refit is the exact least-squares optimum on the calibration statistics (``λ`` a small ridge
relative to the mean diagonal, 0 allowed); a layer without a bias is refit on ``K`` alone.
Scores of input columns are computed here too (``||W[:, j]|| · ||a_j||`` and friends).
"""

from __future__ import annotations

from typing import Literal

import torch

from prunekit.errors import PlanError
from prunekit.oneshot.engine import LayerStats

ColumnCriterion = Literal["activation", "fluctuation", "weight"]
COLUMN_CRITERIA: tuple[str, ...] = ("activation", "fluctuation", "weight")


def column_means(stats: LayerStats) -> torch.Tensor:
    """``mean(a)`` over the calibration tokens, ``(in,)``."""
    if stats.total is None or stats.tokens <= 0:
        raise PlanError("no calibration tokens reached this layer: cannot compensate its removed inputs")
    return stats.total / float(stats.tokens)


def column_scores(weight: torch.Tensor, stats: LayerStats, criterion: str) -> torch.Tensor:
    """Importance of every input column ``j`` of a consuming layer (``weight`` is ``(out, in)``).

    ``"activation"``: ``||W[:, j]|| · ||a_j||`` (Wanda for channels); ``"fluctuation"``:
    ``||W[:, j]||² · Var(a_j)`` (FLAP: what bias compensation cannot restore); ``"weight"``:
    ``||W[:, j]||`` (no data).
    """
    col = weight.detach().to(torch.float32).norm(dim=0)
    energy = stats.hessian.diagonal().clamp_min(0)
    out: torch.Tensor
    if criterion == "activation":
        out = col * energy.sqrt()
        return out
    if criterion == "fluctuation":
        mean = column_means(stats)
        var = (energy / max(stats.tokens, 1) - mean * mean).clamp_min(0)
        out = col.square() * var
        return out
    if criterion == "weight":
        out = col
        return out
    raise PlanError(f"unknown column criterion {criterion!r}; valid: {', '.join(COLUMN_CRITERIA)}")


def removal_error(weight: torch.Tensor, stats: LayerStats, compensated: bool) -> torch.Tensor:
    """Mean squared output error per token of removing each column alone, ``(in,)``.

    ``||W[:, j]||² E[a_j²]`` without compensation, ``||W[:, j]||² Var(a_j)`` with it (the mean is
    restored by the bias). Correlations between columns are ignored (used to rank and allocate).
    """
    col2 = weight.detach().to(torch.float32).square().sum(0)
    n = float(max(stats.tokens, 1))
    second = stats.hessian.diagonal().clamp_min(0) / n
    if compensated:
        mean = column_means(stats)
        second = (second - mean * mean).clamp_min(0)
    return col2 * second


def bias_compensation(weight: torch.Tensor, stats: LayerStats, removed: torch.Tensor) -> torch.Tensor:
    """``W[:, R] · mean(a_R)``: what the removed columns added on average (add it to the bias), ``(out,)``.

    Args:
        weight: ``(out, in)`` weight of the consuming layer (before removal).
        stats: statistics of its input.
        removed: ``(in,)`` bool, the columns removed.
    """
    mean = column_means(stats).to(torch.float32)
    w = weight.detach().to(torch.float32)
    return w[:, removed] @ mean[removed]


def refit_columns(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stats: LayerStats,
    keep: torch.Tensor,
    *,
    dampening: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The least-squares weights of the kept columns (and bias) reproducing the layer on its calibration inputs.

    Args:
        weight: ``(out, in)`` weight before removal.
        bias: ``(out,)`` bias or None (then only the kept weights are refit).
        stats: statistics ``H``, ``Σ a``, ``N`` of the layer input.
        keep: ``(in,)`` bool, the kept columns.
        dampening: ridge ``λ`` relative to the mean diagonal of the kept Gram block (0: plain least squares).

    Returns:
        ``(weight, bias)``: float32 ``(out, in)`` with removed columns exactly 0, and the new bias (or None).

    Raises:
        PlanError: the statistics do not fit the weight.
    """
    w = weight.detach().to(torch.float32)
    n_in = w.shape[1]
    h = stats.hessian.to(torch.float32)
    if tuple(h.shape) != (n_in, n_in) or keep.numel() != n_in:
        raise PlanError(f"statistics of shape {tuple(h.shape)} do not fit a weight of shape {tuple(w.shape)}")
    if bias is not None:
        total = stats.total if stats.total is not None else torch.zeros(n_in)
        g = h.new_empty(n_in + 1, n_in + 1)
        g[:n_in, :n_in] = h
        g[:n_in, n_in] = total
        g[n_in, :n_in] = total
        g[n_in, n_in] = float(stats.tokens)
        w_aug = torch.cat([w, bias.detach().to(torch.float32).reshape(-1, 1)], 1)
        idx = torch.cat([keep.nonzero().flatten(), torch.tensor([n_in])])
    else:
        g, w_aug, idx = h, w, keep.nonzero().flatten()
    sub = g[idx][:, idx].to(torch.float64)
    rhs = (w_aug.to(torch.float64) @ g[:, idx].to(torch.float64)).T  # (K', out)
    lam = dampening * float(sub.diagonal().clamp_min(0).mean()) if idx.numel() else 0.0
    sub.diagonal().add_(lam)
    chol, info = torch.linalg.cholesky_ex(sub)
    if int(info) != 0:  # singular kept block (dead or duplicate inputs): minimum-norm least squares
        sol = torch.linalg.lstsq(sub, rhs, driver="gelsd").solution
    else:
        sol = torch.cholesky_solve(rhs, chol)
    sol_t = sol.T.to(torch.float32)  # (out, K')
    new_w = torch.zeros_like(w)
    k = int(keep.sum())
    new_w[:, keep.nonzero().flatten()] = sol_t[:, :k]
    new_b = sol_t[:, k] if bias is not None else None
    return new_w, new_b


__all__ = [
    "COLUMN_CRITERIA",
    "ColumnCriterion",
    "bias_compensation",
    "column_means",
    "column_scores",
    "refit_columns",
    "removal_error",
]
