"""Importance of channel groups (units) for structured pruning.

A criterion scores every unit of a :class:`prunekit.graph.build.Group`; low scores are removed first. Strings
(``"l2"``, ``"l1"``, ``"bn_scale"``, ``"taylor"``, ``"fpgm"``, ``"random"``) resolve through a registry;
any object with the :class:`ChannelCriterion` protocol works too::

    class MyCriterion:
        name = "mine"
        needs_grad = False
        def score(self, group, params, module_types):   # -> torch.Tensor of shape (group.n_units,)
            ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from prunekit.core import criterion_registry
from prunekit.errors import ConfigError
from prunekit.graph import Group, Member


@runtime_checkable
class ChannelCriterion(Protocol):
    """Protocol of a channel-group criterion.

    Attributes:
        name: Short name for reports.
        needs_grad: If True, parameters carry ``.grad`` when ``score`` is called (from ``data``/``loss_fn``
            or gradients already present).
    """

    name: str
    needs_grad: bool

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        """Return one non-negative score per unit of ``group`` (shape ``(group.n_units,)``)."""
        ...


def reduce_members(
    group: Group,
    params: Mapping[str, torch.Tensor],
    per_index: Callable[[torch.Tensor, int, str], torch.Tensor | None],
) -> torch.Tensor:
    """Sum ``per_index(tensor, dim, name)`` (one value per index of ``dim``) over members into units."""
    total = torch.zeros(group.n_units, dtype=torch.float64)
    for m in group.members:
        t = params.get(m.name)
        if t is None:
            continue
        vals = per_index(t.detach(), m.dim, m.name)
        if vals is None:
            continue
        total += _scatter(m, vals.double().cpu(), group.n_units)
    return total


def _identity(m: Member, n_units: int) -> bool:
    """Index i of the member is unit i (strictly increasing from 0, ``n_units`` of them)."""
    return len(m.units) == n_units and m.in_order


def _lp_members(group: Group, params: Mapping[str, torch.Tensor], p: int) -> torch.Tensor:
    """:func:`reduce_members` of ``|t|^p`` summed along each member's dim (L1: p=1, squared L2: p=2).

    The 1-D members whose index i is unit i (a BatchNorm's four vectors, biases) are stacked and reduced in
    one call instead of one small call chain each: on MobileNetV2 they are 208 of 295 members.
    """
    total = torch.zeros(group.n_units, dtype=torch.float64)
    vectors = []
    for m in group.members:
        t = params.get(m.name)
        if t is None:
            continue
        t = t.detach()
        if t.dim() == 1 and _identity(m, group.n_units) and t.dtype.is_floating_point:
            vectors.append(t)
            continue
        a = _numpy_view(t) if p == 2 else None
        if a is not None:  # squared L2 in one einsum (1x1 convs along dim 1: 3-4x faster than torch here)
            x = a.reshape(math.prod(a.shape[: m.dim]), a.shape[m.dim], -1)
            sq = torch.from_numpy(np.einsum("ijk,ijk->j", x, x).astype(np.float64))
            total += _scatter(m, sq, group.n_units)
            continue
        v = _norm_along(t, m.dim, p)
        total += _scatter(m, (v if p == 1 else v.pow(2)).double().cpu(), group.n_units)
    same_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in vectors:  # torch.stack needs one dtype and device
        same_kind.setdefault((t.dtype, t.device), []).append(t)
    for ts in same_kind.values():
        if p == 2 and all(_numpy_able(t) for t in ts):
            st = np.stack([t.numpy() for t in ts])
            total += torch.from_numpy(np.einsum("ij,ij->j", st, st).astype(np.float64))
            continue
        absval = torch.stack(ts).float().abs()
        total += (absval if p == 1 else absval * absval).double().cpu().sum(0)
    return total


def _numpy_able(t: torch.Tensor) -> bool:
    """``t.numpy()`` is the tensor's own memory: a plain CPU float32/float64 tensor (no conj/neg bit)."""
    return (
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and t.layout == torch.strided
        and not (t.is_conj() or t.is_neg())
    )


def _numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """The memory of a tensor with at least 2 dims as a numpy array (no copy) where :func:`_numpy_able`."""
    return t.numpy() if t.dim() >= 2 and _numpy_able(t) else None


def _scatter(m: Member, vals: torch.Tensor, n_units: int) -> torch.Tensor:
    if _identity(m, n_units):
        return vals  # the scatter is a copy
    units = torch.from_numpy(m.units)
    sel = units >= 0
    return torch.zeros(n_units, dtype=torch.float64).index_add_(0, units[sel], vals[sel])


def _norm_along(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """p-norm of every slice ``t.select(dim, i)`` (no temporary copy of ``t``)."""
    if t.dim() == 1:
        return t.float().abs()
    if dim == 0:  # rows: vector_norm is fast along the contiguous dim
        out: torch.Tensor = torch.linalg.vector_norm(t.reshape(t.shape[0], -1).float(), ord=p, dim=1)
        return out
    tf = t.float()
    if t.numel() == 0:
        return tf.abs().sum(_other_dims(t, dim)) if p == 1 else (tf * tf).sum(_other_dims(t, dim)).sqrt()
    v = tf.abs() if p == 1 else tf * tf
    # sum over the leading dims as a (1, lead) @ (lead, rest) product, then over the trailing dims: 1.5-3x
    # faster than a strided .sum over dims (0, 2, 3) of a conv weight (vector_norm over dim 0 is ~10x slower)
    lead = v.reshape(math.prod(t.shape[:dim]), -1)
    ones = torch.ones(1, lead.shape[0], dtype=v.dtype, device=v.device)
    out = (ones @ lead).reshape(t.shape[dim], -1).sum(1)
    return out if p == 1 else out.sqrt()


def _other_dims(t: torch.Tensor, dim: int) -> list[int]:
    return [d for d in range(t.dim()) if d != dim]


class L1:
    """Sum of absolute values of every parameter slice of the unit."""

    name = "l1"
    needs_grad = False

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        return _lp_members(group, params, 1)


class L2:
    """Euclidean norm of every parameter slice of the unit, taken together."""

    name = "l2"
    needs_grad = False

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        return _lp_members(group, params, 2).sqrt()


class BNScale:
    """|gamma| of the BatchNorm layers in the unit (network slimming); groups without BatchNorm use L1."""

    name = "bn_scale"
    needs_grad = False

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        def gamma(t: torch.Tensor, d: int, n: str) -> torch.Tensor | None:
            mod, _, attr = n.rpartition(".")
            if attr == "weight" and "BatchNorm" in module_types.get(mod, "") and t.dim() == 1:
                return t.abs().float()
            return None

        s = reduce_members(group, params, gamma)
        if not bool((s != 0).any()):
            return L1().score(group, params, module_types)
        return s


class Taylor:
    """First-order Taylor estimate of the loss change |sum(w * dL/dw)| over the unit (Molchanov et al.)."""

    name = "taylor"
    needs_grad = True

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        def wg(t: torch.Tensor, d: int, n: str) -> torch.Tensor | None:
            g = params[n].grad
            if g is None:
                return None
            p = t.float() * g.detach().float()
            return p.sum(_other_dims(p, d)) if p.dim() > 1 else p

        return reduce_members(group, params, wg).abs()


class FPGM:
    """Filter pruning via geometric median: units close to all others are redundant (He et al. 2019)."""

    name = "fpgm"
    needs_grad = False

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        total = torch.zeros(group.n_units, dtype=torch.float64)
        used = False
        for m in group.members:
            t = params.get(m.name)
            if t is None or m.dim != 0 or t.dim() < 2:
                continue
            sel = m.units >= 0
            units = m.units[sel]
            counts = np.bincount(units, minlength=group.n_units)
            if counts.min() != counts.max() or counts.min() == 0:
                continue
            rows = t.detach().float().reshape(t.shape[0], -1)[torch.from_numpy(np.nonzero(sel)[0])]
            order = torch.from_numpy(np.argsort(units, kind="stable"))
            vec = rows[order].reshape(group.n_units, -1)
            total += torch.cdist(vec, vec).sum(1).double()
            used = True
        if not used:
            return L2().score(group, params, module_types)
        return total


class Random:
    """Uniform random scores (a baseline); uses torch's global generator."""

    name = "random"
    needs_grad = False

    def score(
        self, group: Group, params: Mapping[str, torch.Tensor], module_types: Mapping[str, str]
    ) -> torch.Tensor:
        return torch.rand(group.n_units, dtype=torch.float64)


CRITERIA = criterion_registry("channel")
for _name, _cls in (
    ("bn_scale", BNScale),
    ("fpgm", FPGM),
    ("l1", L1),
    ("l2", L2),
    ("random", Random),
    ("taylor", Taylor),
):
    CRITERIA.register(_name, _cls, overwrite=False)


def get_criterion(criterion: str | ChannelCriterion) -> ChannelCriterion:
    """Resolve a name or pass through an object with the :class:`ChannelCriterion` protocol.

    Raises:
        ConfigError: unknown name (the message lists the valid ones) or an object without ``score``.

    Example:
        >>> get_criterion("l2").name
        'l2'
    """
    if isinstance(criterion, str):
        cls = CRITERIA.get(criterion.lower())
        if cls is None:
            raise ConfigError(
                CRITERIA.unknown_message(criterion)
                + ", or an object with a score(group, params, module_types) method"
            )
        obj: ChannelCriterion = cls()
        return obj
    if not callable(getattr(criterion, "score", None)):
        raise ConfigError(
            f"criterion {criterion!r} has no score(group, params, module_types) method; valid names: {', '.join(sorted(CRITERIA))}"
        )
    return criterion


__all__ = [
    "CRITERIA",
    "FPGM",
    "L1",
    "L2",
    "BNScale",
    "ChannelCriterion",
    "Random",
    "Taylor",
    "get_criterion",
    "reduce_members",
]
