"""Per-layer solvers: choose a mask for one weight ``W (out, in)`` and reconstruct the kept weights.

Every solver sees the layer's calibration statistics (:class:`LayerStats`): ``H = Σ xᵀx`` over
the real (non-padding) calibration tokens, the input Gram matrix, whose diagonal gives Wanda's
input norms ``||x_j||``. The reconstruction objective of a layer is ``||X Wᵀ - X W0ᵀ||² =
tr((W - W0) H (W - W0)ᵀ)``::

    magnitude   keep the largest |w| of each output row             (no update)
    wanda       keep the largest |w|·||x_j|| of each output row      (no update)
    sparsegpt   OBS: prune column by column, update the later columns with H⁻¹,
                choose the mask per lazy block of columns by w² / [H⁻¹]²_jj
    refit       sparsegpt's mask, then the exact least-squares optimum of the kept weights

N:M groups are ``M`` consecutive inputs of one output row (dim 1 of ``W``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from prunekit.errors import ConfigError


def prune_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a sparsity prunes: ``round(sparsity * n)`` (half up)."""
    return int(math.floor(sparsity * n + 0.5))


def keep_by_row(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Bool keep-mask: the highest scores of each row; exactly ``round(sparsity * in)`` pruned per row.

    With ``nm``, first the N highest of every M consecutive, then (if ``sparsity`` asks for more
    than ``1 - N/M``) the lowest remaining scores of each row on top.
    """
    rows, cols = scores.shape
    keep = torch.ones_like(scores, dtype=torch.bool)
    work = scores.clone()
    if nm is not None:
        n, m = nm
        groups = work.reshape(rows, cols // m, m)
        drop = groups.topk(m - n, dim=-1, largest=False).indices
        keep.view(rows, cols // m, m).scatter_(-1, drop, False)
        work.masked_fill_(~keep, math.inf)  # already pruned: not chosen again below
    k = prune_count(cols, sparsity)
    already = cols - int(keep[0].sum()) if rows else 0
    extra = k - already
    if extra > 0:
        drop = work.topk(extra, dim=1, largest=False).indices
        keep.scatter_(1, drop, False)
    return keep


def magnitude(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask of the largest ``|w|`` per output row."""
    return keep_by_row(weight.abs(), sparsity, nm)


def wanda(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple[int, int] | None
) -> torch.Tensor:
    """Keep-mask of the largest ``|w_ij| · ||x_j||`` per output row (Wanda, Sun et al. 2023)."""
    norms = hessian.diagonal().clamp_min(0).sqrt()
    return keep_by_row(weight.abs() * norms.unsqueeze(0), sparsity, nm)


def damped_inverse_upper(hessian: torch.Tensor, dampening: float, name: str = "") -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + λI)⁻¹`` (``(H + λI)⁻¹ = UᵀU``), ``λ = dampening · mean(diag H)``.

    Inputs never seen (a zero diagonal entry) get a unit diagonal. When either factorisation fails
    (``H + λI`` not positive definite, or its inverse too ill-conditioned in float32 to factor: both
    depend on the CPU's rounding), λ grows 10x (up to 6 times) with a warning, never NaN.

    Raises:
        ConfigError: the Hessian holds NaN/inf (the calibration activations overflowed).
    """
    h = hessian.clone()  # the only copy: the dampening is added to its diagonal in place
    diag = h.diagonal()
    if not bool(torch.isfinite(diag).all()) or not bool(torch.isfinite(h).all()):
        raise ConfigError(
            f"calibration statistics of {name or 'a layer'} hold NaN/inf: the activations overflowed; "
            "calibrate in float32 or with shorter inputs"
        )
    dead = diag <= 0
    diag[dead] = 1.0
    mean = float(diag.mean())
    lam = dampening * mean
    added = 0.0
    for attempt in range(7):
        diag.add_(lam - added)
        added = lam
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0 and bool(torch.isfinite(chol).all()):
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                if attempt:
                    warnings.warn(
                        f"Hessian of {name or 'a layer'} is not positive definite with dampening={dampening}; "
                        f"used {lam / mean:.3g} x mean diagonal instead",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return upper  # type: ignore[no-any-return]
        del chol
        lam = max(lam, 1e-8 * mean) * 10
    raise ConfigError(f"Hessian of {name or 'a layer'} is not positive definite even with heavy dampening")


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    *,
    block_size: int = 128,
    dampening: float = 0.01,
    forced: torch.Tensor | None = None,
    tail: int = 0,
    name: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): OBS pruning with lazy column blocks.

    Args:
        weight: ``(out, in)`` float weight (not modified).
        hessian: ``(in, in)`` ``Σ xᵀx``.
        sparsity: fraction to prune. Unstructured: exactly ``round(sparsity · out · cols)`` of each
            block of columns (lowest ``w² / [U]²_jj``). With ``nm``: N of every M per row.
        nm: N:M pattern or ``None``. With both, extra weights are pruned in a second pass.
        block_size: columns per lazy block.
        dampening: relative diagonal dampening of ``H``.
        forced: keep-mask whose False entries must be pruned (counted in the block budget).
        tail: the last ``tail`` columns are never pruned but take OBS updates (a bias column, with
            a ones input, soaks up the mean of the pruning error); sparsity counts the others.
        name: layer name for messages.

    Returns:
        ``(new_weight, keep_mask)``.
    """
    if nm is not None and sparsity > 1 - nm[0] / nm[1] + 1e-9:
        opts: dict[str, Any] = {"block_size": block_size, "dampening": dampening, "tail": tail, "name": name}
        w1, keep1 = sparsegpt(weight, hessian, 0.0, nm, **opts)
        return sparsegpt(w1, hessian, sparsity, None, forced=keep1, **opts)
    w = weight.detach().to(torch.float32).clone()
    rows, cols = w.shape
    last = cols - tail  # columns [last, cols) are never pruned
    u = damped_inverse_upper(hessian.to(torch.float32), dampening, name)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = u1.diagonal()
        prune1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            score = w1.pow(2) / d.pow(2).unsqueeze(0)  # OBS saliency of each weight of the block
            if forced is not None:
                score.masked_fill_(~forced[:, i1:i2], -math.inf)
            free = max(0, min(i2, last) - i1)
            score = score[:, :free]
            k = prune_count(score.numel(), sparsity)
            if k:
                idx = score.reshape(-1).topk(k, largest=False).indices
                sub = torch.zeros(rows * free, dtype=torch.bool, device=w.device)
                sub[idx] = True
                prune1[:, :free] = sub.view(rows, free)
        for i in range(count):
            if nm is not None and i % nm[1] == 0 and i1 + i < last:
                n, m = nm
                score = w1[:, i : i + m].pow(2) / d[i : i + m].pow(2).unsqueeze(0)
                prune1[:, i : i + m].scatter_(1, score.topk(m - n, dim=1, largest=False).indices, True)
            col = w1[:, i]
            q = torch.where(prune1[:, i], torch.zeros_like(col), col)
            e = (col - q) / d[i]  # (out,)
            w1[:, i:].addr_(e, u1[i, i:], alpha=-1.0)  # in place: no (out, block) temporary
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        keep[:, i1:i2] = ~prune1
        if i2 < cols:
            w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w.masked_fill_(~keep, 0.0)
    return w, keep


def masked_error(
    weight: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor, max_rows: int = 256
) -> float:
    """Relative reconstruction error ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` on the calibration inputs.

    Measured on at most ``max_rows`` evenly spaced output rows (a report, not an objective: the
    full product would cost as much as pruning the layer again).
    """
    rows = weight.shape[0]
    pick = torch.linspace(0, rows - 1, min(rows, max_rows)).round().long() if rows > max_rows else slice(None)
    w0 = weight[pick].to(torch.float32)
    delta = new[pick].to(torch.float32) - w0
    num = float(((delta @ hessian) * delta).sum())
    den = float(((w0 @ hessian) * w0).sum())
    return num / den if den > 0 else 0.0


__all__ = [
    "damped_inverse_upper",
    "keep_by_row",
    "magnitude",
    "masked_error",
    "prune_count",
    "sparsegpt",
    "wanda",
]
