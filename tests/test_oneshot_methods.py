"""Per-layer one-shot solvers against small independent references on random layers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.oneshot.methods import keep_by_row, magnitude, masked_error, prune_count, sparsegpt, wanda
from prunekit.oneshot.owl import owl_sparsities
from prunekit.oneshot.refit import augment, refit, refit_cg, ridge


def _layer(
    out: int = 24, inp: int = 32, tokens: int = 400, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the Gram matrix of correlated, anisotropic inputs (as real activations are)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) * 0.05 + torch.eye(inp)
    x = (
        torch.randn(tokens, inp, generator=g) * (1.5 * torch.randn(inp, generator=g)).exp()
    ) @ mix  # outlier features
    return torch.randn(out, inp, generator=g), x.T @ x


def _x(tokens: int, inp: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, inp, generator=g) * torch.rand(inp, generator=g) * 2


# ----------------------------------------------------------------------------- masks


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 5),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
    extra=st.floats(0, 0.4),
    seed=st.integers(0, 1000),
)
def test_keep_by_row_is_exact_and_nm_valid(
    rows: int, groups: int, nm: tuple[int, int], extra: float, seed: int
) -> None:
    n, m = nm
    cols = groups * m
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    sparsity = 1 - n / m + extra * n / m
    keep = keep_by_row(scores, sparsity, nm)
    assert keep.dtype == torch.bool
    assert (keep.reshape(rows, groups, m).sum(-1) <= n).all()  # N:M holds
    pruned = (~keep).sum(1)
    assert (pruned == max(prune_count(cols, sparsity), cols - groups * n)).all()  # exact per row


def test_magnitude_and_wanda_match_a_numpy_reference() -> None:
    w, h = _layer()
    norms = np.sqrt(np.diag(h.numpy()))
    for keep, score in (
        (magnitude(w, 0.6, None), np.abs(w.numpy())),
        (wanda(w, h, 0.6, None), np.abs(w.numpy()) * norms),
    ):
        k = prune_count(w.shape[1], 0.6)
        ref = np.ones(w.shape, dtype=bool)
        for r in range(w.shape[0]):
            ref[r, np.argsort(score[r], kind="stable")[:k]] = False
        np.testing.assert_array_equal(keep.numpy(), ref)


# ----------------------------------------------------------------------------- SparseGPT


def _obs_reference(
    w: torch.Tensor, h: torch.Tensor, sparsity: float, block: int, damp: float
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT written from the OBS equations: explicit inverse Hessian, eliminated one column at a time.

    After column j is fixed, the remaining inverse is the Schur complement
    ``Hinv - Hinv[:, j] Hinv[j, :] / Hinv[j, j]``; a pruned weight's error ``(w_j - q_j) / Hinv[j, j]``
    is spread over the later columns with ``Hinv[j, :]``. The mask of each block of columns prunes
    the lowest ``w_j² / Hinv[j, j]`` (taken at the column's elimination) over the whole block.
    """
    W = w.double().numpy().copy()
    H = h.double().numpy().copy()
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    cols = W.shape[1]
    hinv = np.linalg.inv(H)
    seq = []  # Hinv at the elimination of each column (only rows/cols >= j matter)
    cur = hinv.copy()
    for j in range(cols):
        seq.append(cur.copy())
        cur = cur - np.outer(cur[:, j], cur[j, :]) / cur[j, j]
    keep = np.ones(W.shape, dtype=bool)
    for b0 in range(0, cols, block):
        b1 = min(cols, b0 + block)
        diag = np.array([seq[j][j, j] for j in range(b0, b1)])
        score = W[:, b0:b1] ** 2 / diag[None, :]
        k = prune_count(score.size, sparsity)
        flat = np.argsort(score, axis=None, kind="stable")[:k]
        sub = np.ones(score.size, dtype=bool)
        sub[flat] = False
        keep[:, b0:b1] = sub.reshape(score.shape)
        for j in range(b0, b1):
            hj = seq[j]
            q = np.where(keep[:, j], W[:, j], 0.0)
            err = (W[:, j] - q) / hj[j, j]
            W[:, j:] -= np.outer(err, hj[j, j:])
            W[:, j] = q
    return W, keep


@pytest.mark.parametrize("block", [8, 32])
def test_sparsegpt_matches_the_obs_reference(block: int) -> None:
    w, h = _layer(out=12, inp=32)
    new, keep = sparsegpt(w, h, 0.5, None, block_size=block, dampening=0.01)
    ref_w, ref_keep = _obs_reference(w, h, 0.5, block, 0.01)
    np.testing.assert_array_equal(keep.numpy(), ref_keep)
    np.testing.assert_allclose(new.numpy(), ref_w, rtol=1e-3, atol=1e-3 * float(np.abs(ref_w).max()))


def test_sparsegpt_exact_count_per_block_and_nm() -> None:
    w, h = _layer(out=10, inp=48)
    _, keep = sparsegpt(w, h, 0.55, None, block_size=16)
    for b in range(3):
        assert int((~keep[:, 16 * b : 16 * (b + 1)]).sum()) == prune_count(160, 0.55)
    _, keep = sparsegpt(w, h, 0.5, (2, 4), block_size=16)
    assert (keep.reshape(10, 12, 4).sum(-1) == 2).all()
    _, keep = sparsegpt(w, h, 0.7, (2, 4), block_size=16)  # N:M plus more
    assert (keep.reshape(10, 12, 4).sum(-1) <= 2).all()
    assert int((~keep).sum()) == 3 * prune_count(160, 0.7)


def test_error_ordering_on_the_same_inputs() -> None:
    for seed in range(3):
        w, h = _layer(out=32, inp=64, seed=seed)
        errs = {}
        for name in ("magnitude", "wanda", "sparsegpt", "refit"):
            if name == "magnitude":
                new = w * magnitude(w, 0.5, None)
            elif name == "wanda":
                new = w * wanda(w, h, 0.5, None)
            else:
                new, keep = sparsegpt(w, h, 0.5, None)
                if name == "refit":
                    new = refit(w, h, keep)
            errs[name] = masked_error(w, new, h)
        assert errs["refit"] < errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs


def test_non_positive_definite_hessian_gets_more_dampening_not_nan() -> None:
    x = _x(5, 16, 0)  # 5 tokens, 16 inputs: rank 5
    h = x.T @ x
    h[3, 3] = -1.0  # not even positive semi-definite
    w = torch.randn(4, 16)
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        new, keep = sparsegpt(w, h, 0.5, None, dampening=0.0)
    assert torch.isfinite(new).all() and int((~keep).sum()) == 32


def test_nan_statistics_are_a_clear_error() -> None:
    h = torch.eye(8)
    h[0, 1] = math.nan
    with pytest.raises(ConfigError, match="NaN"):
        sparsegpt(torch.randn(2, 8), h, 0.5, None)


# ----------------------------------------------------------------------------- refit


def _lstsq_reference(w: torch.Tensor, x: torch.Tensor, keep: torch.Tensor, lam: float) -> torch.Tensor:
    """Row by row: min ||X_S v - X w0||² + λ||v - w0_S||², stacked as one least-squares problem."""
    out = torch.zeros(w.shape, dtype=torch.float64)
    xd, wd = x.double(), w.double()
    for r in range(w.shape[0]):
        s = keep[r].nonzero().squeeze(1)
        a = torch.cat([xd[:, s], math.sqrt(lam) * torch.eye(len(s), dtype=torch.float64)])
        b = torch.cat([xd @ wd[r], math.sqrt(lam) * wd[r, s]])
        out[r, s] = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return out


def test_refit_is_the_least_squares_optimum() -> None:
    x = _x(300, 24, 1)
    h = x.T @ x
    w = torch.randn(10, 24)
    _, keep = sparsegpt(w, h, 0.6, None, block_size=8)  # uneven kept counts per row
    lam = ridge(h, 0.01)
    ref = _lstsq_reference(w, x, keep, lam)
    exact = refit(w, h, keep, dampening=0.01, max_elements=2 * 24 * 24)  # several row batches
    cg = refit_cg(w, h, keep, w * keep, dampening=0.01, iterations=200, tol=1e-7)
    torch.testing.assert_close(exact.double(), ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(cg.double(), ref, rtol=1e-3, atol=1e-4)
    assert not exact[~keep].any() and not cg[~keep].any()


def test_bias_augmentation_is_the_ones_column() -> None:
    x = _x(50, 6, 2)
    w, b = torch.randn(3, 6), torch.randn(3)
    w_aug, h_aug = augment(w, b, x.T @ x, x.sum(0), 50)
    xa = torch.cat([x, torch.ones(50, 1)], 1)
    torch.testing.assert_close(h_aug, xa.T @ xa)
    torch.testing.assert_close(x @ w.T + b, xa @ w_aug.T)


# ----------------------------------------------------------------------------- OWL


@settings(max_examples=30, deadline=None)
@given(
    ratios=st.lists(st.floats(0, 0.2), min_size=2, max_size=12),
    target=st.floats(0.2, 0.7),
    lam=st.floats(0, 0.1),
)
def test_owl_sparsities_average_to_the_target(ratios: list[float], target: float, lam: float) -> None:
    s = owl_sparsities(ratios, target, lam)
    assert sum(s) / len(s) == pytest.approx(target, abs=1e-9)
    assert max(s) - min(s) <= 2 * lam + 1e-9
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(
        s[a] >= s[b] - 1e-12 for a, b in zip(order, order[1:], strict=False)
    )  # more outliers, less pruned
