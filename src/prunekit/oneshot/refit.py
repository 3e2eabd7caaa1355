"""Least-squares refit of the kept weights of a pruned layer (exact Cholesky, or conjugate gradients).

For one output row with kept inputs ``S``, the best kept weights on the calibration inputs solve
a small ridge-regularised normal equation::

    min_w  ||X_S w - X w0||² + λ ||w - w0_S||²
    (H_SS + λI) w = ((H + λI) w0)_S,        H = Σ xᵀx,  λ = dampening · mean(diag H)

SparseGPT's own update only approximates this optimum (its error is typically 15-35% above it).
:func:`refit` factorises every row's system (rows of one batch padded with identity rows to the
largest kept count); :func:`refit_cg` reaches the same weights by conjugate gradients, one
``(out, in) @ (in, in)`` product per iteration for all rows at once, which scales to wide layers.
A bias joins as one more never-pruned weight on a constant input (:func:`augment`).
"""

from __future__ import annotations

import torch


def ridge(hessian: torch.Tensor, dampening: float) -> float:
    """The dampening ``λ = dampening · mean(diag H)`` used by every solver."""
    diag = hessian.diagonal()
    diag = torch.where(diag > 0, diag, torch.ones((), dtype=diag.dtype))  # as damped_inverse_upper does
    return dampening * float(diag.mean()) if diag.numel() else 0.0


def refit_cg(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    keep: torch.Tensor,
    start: torch.Tensor,
    *,
    dampening: float = 0.01,
    iterations: int = 50,
    tol: float = 1e-4,
) -> torch.Tensor:
    """The same optimum as :func:`refit`, by Jacobi-preconditioned conjugate gradients on all rows at once.

    Each iteration costs one ``(out, in) @ (in, in)`` product, so it scales to layers whose
    per-row systems are too large to factorise; warm-started from ``start`` (e.g. SparseGPT's
    weights), a few dozen iterations reach the optimum to ``tol`` (relative residual).

    Args:
        weight: ``(out, in)`` dense weight ``W0``.
        hessian: ``(in, in)`` ``Σ xᵀx``.
        keep: ``(out, in)`` bool mask.
        start: ``(out, in)`` initial kept weights.
        dampening: ``λ`` relative to the mean diagonal of ``H``.
        iterations: at most this many iterations.
        tol: stop once every row's residual is below ``tol`` times its right-hand side.

    Returns:
        ``(out, in)`` float32 weights, zero where ``keep`` is False.
    """
    h = hessian.to(torch.float32)
    lam = ridge(h, dampening)
    a = h.clone()
    a.diagonal().add_(lam)
    dead = h.diagonal() <= 0
    a.diagonal()[dead] = 1.0 + lam
    kf = keep.to(torch.float32)
    b = (weight.to(torch.float32) @ a) * kf  # (out, in): rows of A w0, restricted to the kept set
    x = start.to(torch.float32) * kf
    r = b - (x @ a) * kf
    inv_diag = 1.0 / a.diagonal()
    z = r * inv_diag
    p = z.clone()
    rz = (r * z).sum(1)
    limit = (tol * b.norm(dim=1)).clamp_min(1e-30)
    for _ in range(iterations):
        if bool((r.norm(dim=1) <= limit).all()):
            break
        ap = (p @ a) * kf
        denom = (p * ap).sum(1)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-30), torch.zeros_like(rz))
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1.0)
        z = r * inv_diag
        rz_new = (r * z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p = z + beta.unsqueeze(1) * p
        rz = rz_new
    return x.masked_fill_(~keep, 0.0)


def augment(
    weight: torch.Tensor, bias: torch.Tensor, hessian: torch.Tensor, total: torch.Tensor, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[W | b]`` and the Gram matrix of ``[x, 1]``: the bias as one more, never pruned, weight.

    Solving with these lets the bias absorb the mean of the pruning error (``E[ΔW x]``).
    """
    w = torch.cat([weight.to(torch.float32), bias.detach().to(torch.float32).reshape(-1, 1)], 1)
    d = hessian.shape[0]
    h = hessian.new_empty(d + 1, d + 1)
    h[:d, :d] = hessian
    h[:d, d] = total
    h[d, :d] = total
    h[d, d] = float(tokens)
    return w, h


def refit(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    keep: torch.Tensor,
    *,
    dampening: float = 0.01,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """The exact ridge least-squares kept weights for a fixed mask (pruned entries exactly 0).

    Args:
        weight: ``(out, in)`` dense weight ``W0``.
        hessian: ``(in, in)`` ``X_pᵀ X_p``.
        keep: ``(out, in)`` bool mask.
        dampening: ``λ`` relative to the mean diagonal of ``H``.
        max_elements: bound on the batched system's size (rows x K x K floats).

    Returns:
        ``(out, in)`` float32 weights, zero where ``keep`` is False.
    """
    h = hessian.to(torch.float32)
    lam = ridge(h, dampening)
    b = weight.to(torch.float32) @ h + lam * weight.to(torch.float32)  # (out, in): rows of (H + λI) w0
    out = torch.zeros_like(b)
    rows, cols = keep.shape
    counts = keep.sum(1)
    # kept indices first (stable order), so row r's unknowns are idx[r, :counts[r]]
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    k_max = int(counts.max()) if rows else 0
    if k_max == 0:
        return out
    step = max(1, max_elements // (k_max * k_max))
    eye = torch.eye(k_max, dtype=h.dtype, device=h.device)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        idx = order[r0:r1, :k_max]  # (R, K)
        valid = torch.arange(k_max, device=h.device).unsqueeze(0) < counts[r0:r1].unsqueeze(1)
        sub = h[idx.unsqueeze(2), idx.unsqueeze(1)]  # (R, K, K)
        pair = valid.unsqueeze(2) & valid.unsqueeze(1)
        sub = torch.where(pair, sub, torch.zeros((), dtype=h.dtype)) + eye * (~valid).unsqueeze(1).to(h.dtype)
        sub.diagonal(dim1=1, dim2=2).add_(lam * valid.to(h.dtype))
        rhs = torch.gather(b[r0:r1], 1, idx) * valid.to(h.dtype)  # (R, K)
        chol, info = torch.linalg.cholesky_ex(sub)
        if bool((info != 0).any()):  # pragma: no cover - H + λI is positive definite for λ > 0
            sub.diagonal(dim1=1, dim2=2).add_(lam * 10 + 1e-6)
            chol = torch.linalg.cholesky(sub)
        sol = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2) * valid.to(h.dtype)
        out[r0:r1].scatter_(1, idx, sol)
    return out.masked_fill_(~keep, 0.0)


__all__ = ["augment", "refit", "refit_cg", "ridge"]
