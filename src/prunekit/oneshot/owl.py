"""OWL: outlier-weighted layer-wise sparsity (Yin et al. 2024).

Blocks whose Wanda scores ``|w_ij| · ||x_j||`` hold more outliers (scores above ``M`` times their
layer's mean) are pruned less::

    D_b   = outliers of block b / weights of block b              (dense model, calibration data)
    r_b   = 2λ (D_b - min D) / (max D - min D)                     in [0, 2λ]
    s_b   = target + mean(r) - r_b                                 mean(s_b) = target

so the block sparsities average to the target and span at most ``2λ``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def outliers(weight: torch.Tensor, col_sq_norms: torch.Tensor, threshold: float) -> int:
    """How many Wanda scores of ``weight (out, in)`` exceed ``threshold × their mean``."""
    score = weight.detach().abs().to(torch.float32) * col_sq_norms.clamp_min(0).sqrt().unsqueeze(0)
    return int((score > threshold * score.mean()).sum())


def owl_sparsities(ratios: Sequence[float], target: float, lam: float, floor: float = 0.0) -> list[float]:
    """Block sparsities from outlier ratios ``D_b`` (see the module docstring).

    Args:
        ratios: outlier ratio of each block.
        target: the mean sparsity.
        lam: the spread λ.
        floor: no block below this (e.g. an N:M pattern's own sparsity); the others absorb it.

    Returns:
        One sparsity per block in ``[floor, 1)``.

    Example:
        >>> [round(s, 3) for s in owl_sparsities([0.01, 0.02, 0.03], 0.5, 0.1)]
        [0.6, 0.5, 0.4]
    """
    d = [float(r) for r in ratios]
    if not d:
        return []
    lo, hi = min(d), max(d)
    spread = [(x - lo) / (hi - lo) * 2 * lam if hi > lo else 0.0 for x in d]
    mean = sum(spread) / len(spread)
    out = [min(max(target + mean - r, floor), 0.999) for r in spread]
    return out


__all__ = ["outliers", "owl_sparsities"]
