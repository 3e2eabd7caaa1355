"""Which weights go, in bounded memory: scores in chunks become order-preserving int32 keys, a two-pass radix select finds the exact k-th key (global scope), N:M keeps per group, masks are written in place."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from prunekit.core import (
    Target,
    get_mask,
    set_mask,
)
from prunekit.errors import ConfigError, PatternError
from prunekit.weights.criteria import Magnitude, WeightCriterion

if TYPE_CHECKING:
    from prunekit.weights.api import WeightPruningConfig


BINS = 1 << 16


class Workspace:
    """Buffers reused chunk after chunk, so scoring a huge model allocates almost nothing per chunk."""

    def __init__(self) -> None:
        self.size = 0
        self.device: torch.device | None = None

    def ensure(self, n: int, device: torch.device) -> None:
        if n > self.size or device != self.device:
            self.size, self.device = max(n, self.size), device
            self.scores = torch.empty(self.size, dtype=torch.float32, device=device)
            self.key = torch.empty(self.size, dtype=torch.int32, device=device)
            self.tmp = torch.empty(self.size, dtype=torch.int32, device=device)
            self.flag = torch.empty(self.size, dtype=torch.bool, device=device)
            self.flag2 = torch.empty(self.size, dtype=torch.bool, device=device)

    def keys(self, scores: torch.Tensor) -> torch.Tensor:
        """Order-preserving int32 keys of float32 scores (negative floats flipped below positive)."""
        n = scores.numel()
        bits, key, tmp = scores.view(-1).view(torch.int32), self.key[:n], self.tmp[:n]
        torch.bitwise_right_shift(bits, 31, out=tmp)
        tmp.bitwise_and_(0x7FFFFFFF)
        return torch.bitwise_xor(bits, tmp, out=key)

    def high(self, key: torch.Tensor) -> torch.Tensor:
        """Bucket of the high 16 bits, in [0, 65536)."""
        return torch.bitwise_right_shift(key, 16, out=self.tmp[: key.numel()]).add_(32768)


def key_to_float(key: int) -> float:
    """Inverse of the key mapping: the float32 value whose key is ``key``."""
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return float(struct.unpack("<f", struct.pack("<i", bits))[0])


def nm_mask(scores: torch.Tensor, in_dim: int, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores of every M consecutive along ``in_dim``."""
    s = scores.movedim(in_dim, -1)  # (..., C_in)
    shape = s.shape
    groups = s.reshape(*shape[:-1], shape[-1] // m, m)  # (..., C_in/M, M)
    idx = groups.topk(n, dim=-1).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)
    return keep.reshape(shape).movedim(-1, in_dim)


class Scorer:
    """Yields float32 scores of a target's weight chunk by chunk, -inf where already pruned."""

    def __init__(self, criterion: WeightCriterion, cfg: WeightPruningConfig) -> None:
        self.criterion = criterion
        self.nm = cfg.nm
        self.chunk = cfg.chunk_elements
        self.ws = Workspace()

    def row_slices(self, target: Target) -> Iterator[slice]:
        w = target.weight
        rows = w.shape[0]
        per_row = max(1, w.numel() // max(rows, 1))
        step = max(1, self.chunk // per_row)
        if self.nm is not None and target.in_dim == 0:
            m = self.nm[1]
            step = max(m, step - step % m)
        for start in range(0, rows, step):
            yield slice(start, min(rows, start + step))

    def chunks(
        self, target: Target, check_nan: bool = False
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
        """``(rows, scores, keep_before)``: scores are -inf where ``keep_before`` is False.

        ``scores`` lives in the workspace: it is valid until the next chunk is produced. Zeros are
        made ``+0.0`` so that float comparisons and integer keys order scores the same way.
        """
        mask = get_mask(target.module, target.param_name)
        ws = self.ws
        fast = type(self.criterion) is Magnitude
        for rows in self.row_slices(target):
            weights = target.weight.detach()[rows]
            expected = tuple(weights.shape)
            n = weights.numel()
            ws.ensure(n, weights.device)
            scores = ws.scores[:n].view(expected)
            if fast and weights.dtype == torch.float32:
                torch.abs(weights, out=scores)
            else:
                raw = self.criterion.score(target, rows)
                if not isinstance(raw, torch.Tensor) or tuple(raw.shape) != expected:
                    got = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                    raise ConfigError(
                        f"criterion {self.criterion!r} returned {got} for {target.fqn!r}[{rows.start}:{rows.stop}], "
                        f"expected a tensor of shape {expected}"
                    )
                scores.copy_(raw.detach())  # never write into a tensor the criterion may own
                del raw
            scores.add_(0.0)  # -0.0 -> +0.0
            if check_nan and torch.isnan(scores.sum()) and torch.isnan(scores).any():
                raise ConfigError(f"criterion {self.criterion!r} returned NaN scores for {target.fqn!r}")
            flag = ws.flag[:n].view(expected)
            keep = mask[rows] if mask is not None else None
            if keep is not None:
                scores.masked_fill_(torch.logical_not(keep, out=flag), -math.inf)
            if self.nm is not None:
                nm_keep = nm_mask(scores, target.in_dim, *self.nm)
                keep = nm_keep if keep is None else keep & nm_keep
                scores.masked_fill_(torch.logical_not(keep, out=flag), -math.inf)
            yield rows, scores, keep


def kth_key(scorer: Scorer, targets: Sequence[Target], k: int) -> tuple[int, int]:
    """Radix select: the k-th smallest key t (1-based) and how many of the keys equal to t to prune."""
    ws = scorer.ws
    counts = torch.zeros(BINS, dtype=torch.int64)
    for t in targets:
        for _, scores, _ in scorer.chunks(t, check_nan=True):
            counts += torch.bincount(ws.high(ws.keys(scores)), minlength=BINS).cpu()
    cum = counts.cumsum(0)
    bucket = int(torch.searchsorted(cum, torch.tensor(k)))  # first bucket with cum >= k
    below = int(cum[bucket - 1]) if bucket > 0 else 0
    counts.zero_()
    for t in targets:
        for _, scores, _ in scorer.chunks(t):
            key = ws.keys(scores)
            flag = torch.eq(ws.high(key), bucket, out=ws.flag[: key.numel()])
            inside = key[flag]
            if inside.numel():
                counts += torch.bincount(inside.bitwise_and_(0xFFFF), minlength=BINS).cpu()
    cum = counts.cumsum(0)
    low = int(torch.searchsorted(cum, torch.tensor(k - below)))
    less = below + (int(cum[low - 1]) if low > 0 else 0)
    return (bucket - 32768) * BINS + low, k - less


def apply_threshold(scorer: Scorer, targets: Sequence[Target], threshold: tuple[int, int] | None) -> None:
    """Mask every key below the threshold (and the first ties), layer by layer, chunk by chunk.

    The chunk results are ANDed straight into the layer's mask buffer and the pruned weights
    zeroed in place, so no layer-sized temporary is ever built.
    """
    ws = scorer.ws
    tie_budget = threshold[1] if threshold is not None else 0
    value = key_to_float(threshold[0]) if threshold is not None else 0.0
    for t in targets:
        param = t.weight
        if get_mask(t.module, t.param_name) is None:  # register an all-True mask: no copy of anything
            set_mask(
                t.module,
                t.param_name,
                torch.ones((), dtype=torch.bool, device=param.device).expand(param.shape),
            )
        mask = get_mask(t.module, t.param_name)
        assert mask is not None
        zero = param.new_zeros(())
        for rows, scores, keep in scorer.chunks(t):
            n = scores.numel()
            if threshold is None:
                if keep is None:
                    continue
                chunk_keep = keep
            else:
                flag = ws.flag[:n].view(scores.shape)
                if tie_budget == 0:  # common case: one comparison (zeros are canonical, no NaN)
                    chunk_keep = torch.ge(scores, value, out=flag)
                else:
                    chunk_keep = torch.gt(scores, value, out=flag)
                    ties = (
                        torch.eq(scores, value, out=ws.flag2[:n].view(scores.shape))
                        .view(-1)
                        .nonzero()
                        .view(-1)
                    )
                    if ties.numel() > tie_budget:  # prune only the first `tie_budget` ties, keep the rest
                        chunk_keep.view(-1)[ties[tie_budget:]] = True
                    tie_budget -= min(tie_budget, ties.numel())
            rows_mask = mask[rows]
            rows_mask.logical_and_(chunk_keep)
            weights = param.data[rows]
            torch.where(rows_mask, weights, zero, out=weights)


def full_scores(scorer: Scorer, targets: Sequence[Target]) -> Iterator[tuple[Target, torch.Tensor]]:
    """Each target's whole score tensor (float32, ``-inf`` where already pruned or outside the N:M pattern)."""
    for t in targets:
        parts = [scores.clone() for _, scores, _ in scorer.chunks(t, check_nan=True)]
        yield t, torch.cat(parts, dim=0)


def pruned_count(target: Target) -> int:
    mask = get_mask(target.module, target.param_name)
    return mask.numel() - int(torch.count_nonzero(mask)) if mask is not None else 0


def check_pattern(targets: Sequence[Target], pattern: str, nm: tuple[int, int]) -> None:
    n, m = nm
    for t in targets:
        shape = tuple(t.weight.shape)
        size = shape[t.in_dim]
        if size % m:
            raise PatternError(
                f"{t.name!r} ({t.kind}, weight {shape}) cannot take pattern {pattern!r}: its input dimension "
                f"(dim {t.in_dim}) has {size} weights, not a multiple of M={m}. "
                f"Leave it dense with exclude=[{t.name!r}] (or choose an M that divides {size})."
            )


__all__ = [
    "BINS",
    "Scorer",
    "Workspace",
    "apply_threshold",
    "check_pattern",
    "full_scores",
    "key_to_float",
    "kth_key",
    "nm_mask",
    "pruned_count",
]
