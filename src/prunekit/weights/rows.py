"""Per-output-row comparison groups (Wanda's choice) and the warning for layers pruned away.

Wanda (Sun et al. 2023, sec. 3) compares the scores ``|W_ij| * ||X_j||`` only within one output row
``i``: every output neuron keeps the same fraction of its inputs. A global threshold instead lets one
layer with small activations (a BERT pooler, an output projection) lose nearly all of its weights::

    scope="global"   one threshold over every selected weight
    scope="layer"    the same fraction in every layer
    scope="row"      the same fraction in every output row of every layer (Wanda's default)

For an ``nn.Linear``/``nn.Conv*`` weight the output is dim 0; for a GPT-2 ``Conv1D`` (stored
``(in, out)``) it is dim 1. Entries already pruned count toward a row's fraction (pruning is cumulative).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import torch

from prunekit.core import Target, get_mask, is_hf_conv1d, set_mask
from prunekit.errors import LayerPrunedAwayWarning

ALMOST_ALL = 0.99
"""A layer with more than this fraction of its weights pruned triggers :class:`LayerPrunedAwayWarning`."""


def output_dim(target: Target) -> int:
    """The dim of ``target.weight`` indexing output units (1 for GPT-2 ``Conv1D``, else 0)."""
    return 1 if is_hf_conv1d(target.module) else 0


def row_keep(scores: torch.Tensor, out_dim: int, sparsity: float) -> torch.Tensor:
    """Bool mask keeping, in every output row, all but the ``round(sparsity * fan_in)`` lowest scores.

    Ties are broken by position (the first lowest are pruned), so the count per row is exact.

    Example:
        >>> s = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 9.0, 8.0, 7.0]])
        >>> row_keep(s, 0, 0.5).int().tolist()
        [[1, 0, 1, 0], [0, 1, 1, 0]]
    """
    rows = scores.movedim(out_dim, 0)
    flat = rows.reshape(rows.shape[0], -1)
    k = int(math.floor(sparsity * flat.shape[1] + 0.5))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, order, False)
    return keep.reshape(rows.shape).movedim(0, out_dim)


def apply_rows(
    targets: Sequence[Target], sparsity: float, scores_of: Iterable[tuple[Target, torch.Tensor]]
) -> None:
    """Mask every target so each output row reaches ``sparsity``; ``scores_of`` yields full score tensors
    (``-inf`` where already pruned). Masks are ANDed with existing ones; pruned weights become zero."""
    del targets  # the order of scores_of is the order of masking
    keeps = [(t, row_keep(scores, output_dim(t), sparsity)) for t, scores in scores_of]  # no mutation yet
    for t, keep in keeps:
        set_mask(t.module, t.param_name, keep)


def warn_pruned_away(targets: Sequence[Target], what: str, threshold: float = ALMOST_ALL) -> list[str]:
    """Warn (:class:`LayerPrunedAwayWarning`) about each target pruned above ``threshold``; return their names."""
    hits = []
    for t in targets:
        mask = get_mask(t.module, t.param_name)
        if mask is None or mask.numel() == 0:
            continue
        frac = 1.0 - int(torch.count_nonzero(mask)) / mask.numel()
        if frac > threshold:
            hits.append(f"{t.name} ({frac:.2%})")
    if hits:
        warnings.warn(
            f"{what} pruned {len(hits)} layer(s) to over {threshold:.0%}: {', '.join(hits[:6])}"
            + (" ..." if len(hits) > 6 else "")
            + ". They now pass (almost) nothing on. Use scope='layer' or 'row', exclude=[...] them, "
            "or lower the sparsity.",
            LayerPrunedAwayWarning,
            stacklevel=3,
        )
    return hits


__all__ = ["ALMOST_ALL", "apply_rows", "output_dim", "row_keep", "warn_pruned_away"]
