"""Dependency graph: which slices of which parameters must be removed together.

Every dimension of every parameter and buffer gets one *element* per index. Walking the recorded trace,
each op says which elements are coupled (they must be kept or removed together) and which can never
change (they join the ``FROZEN`` element). Activations carry, per tracked dimension, the element id of
each index; untracked dimensions (batch, space, sequence, a model input's channels) never change size.

::

    conv1.weight[5, :]  ──┐
    conv1.bias[5]        ─┤  one unit = connected component of coupled elements
    bn1.weight/bias[5]   ─┤  ("channel 5 of conv1's output")
    bn1.running_*[5]     ─┤
    conv2.weight[:, 5]  ──┘

Units with the same set of (parameter, dim) members form a *group* (e.g. all 64 output channels of
``conv1``); a group is what a ratio is applied to. Connected components are computed once at the end
(``scipy.sparse.csgraph``), so building the graph is linear in the size of the trace.

Coupling rules (the index mapping of each is exact, from recorded shapes, never from channel counts):
elementwise ops with broadcasting (residual add, SE gate, SwiGLU), conv/linear/matmul/einsum, BatchNorm,
concat/stack/split/chunk, view/reshape by running products of recorded shapes, permute/transpose,
depthwise and grouped conv, attention heads (a view that splits channels into (heads, head_dim) keeps
whole heads), grouped-query attention (SDPA ``enable_gqa`` or an explicit KV repeat), tied parameters
(one value) and parameters used directly (class token, position embedding). Dimensions normalised by
LayerNorm/GroupNorm/RMSNorm, reduced by mean/softmax/max, indexed by literals, or touched by unknown ops
or custom autograd Functions are frozen and reported.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunekit.graph.rules.base import (
    FROZEN,
    ConvInfo,
    CostOp,
    FrozenReason,
    GqaGroups,
    NormStat,
    SizeEvent,
)
from prunekit.graph.rules.builder import GraphBuilder
from prunekit.graph.trace import Trace


@dataclasses.dataclass(frozen=True)
class Member:
    """One parameter dimension touched by a group.

    Attributes:
        name: Canonical fully qualified name of the parameter or buffer.
        dim: The dimension that is sliced.
        size: Size of that dimension.
        units: For each index of the dimension, the unit it belongs to in this group, or -1.
    """

    name: str
    dim: int
    size: int
    units: np.ndarray

    @functools.cached_property
    def in_order(self) -> bool:
        """Index i belongs to unit i, for every index (``units`` is ``0, 1, ..., size - 1``)."""
        u = self.units
        return len(u) == 0 or (u[0] == 0 and u[-1] == len(u) - 1 and bool((u[1:] > u[:-1]).all()))


@dataclasses.dataclass
class Group:
    """A set of coupled units of equal structure (e.g. all output channels of one conv).

    Removing unit ``u`` removes, for every member, the indices ``where(member.units == u)``.

    Attributes:
        gid: Index in ``DependencyGraph.groups``.
        n_units: Number of units.
        members: Parameter dimensions touched.
        labels: Component label of each unit (internal).
        kind: ``"channel"`` (one index per member) or ``"multi"`` (units spanning several indices, e.g. heads).
    """

    gid: int
    n_units: int
    members: list[Member]
    labels: np.ndarray
    kind: str = "channel"

    @property
    def name(self) -> str:
        """A readable name: the first member that produces the units (dim 0 of a weight)."""
        for m in self.members:
            if m.dim == 0 and m.name.endswith("weight"):
                return f"{m.name.rsplit('.', 1)[0]}:out"
        m = self.members[0]
        return f"{m.name}[dim {m.dim}]"


@dataclasses.dataclass
class DependencyGraph:
    """Coupled units of a traced model.

    Attributes:
        trace: The recorded trace.
        groups: Prunable groups (each with at least two units).
        frozen: Why some channels are kept.
        labels: Component label of every element.
        frozen_label: Label of the frozen component.
        param_dims: ``(value id, dim, first element, size)`` for every parameter dimension.
        convs: Conv calls (to update ``groups`` of depthwise convs).
        events: Size literals that follow pruned dims.
        costs: Matmul-like ops, for MAC estimates.
    """

    trace: Trace
    groups: list[Group]
    frozen: list[FrozenReason]
    labels: np.ndarray
    frozen_label: int
    param_dims: list[tuple[int, int, int, int]]
    convs: list[ConvInfo]
    events: list[SizeEvent]
    costs: list[CostOp]
    stats: list[NormStat] = dataclasses.field(default_factory=list)
    gqa_groups: list[GqaGroups] = dataclasses.field(default_factory=list)

    def value_name(self, vid: int) -> str:
        return self.trace.values[vid].names[0]


def build_graph(
    trace: Trace,
    *,
    prune_heads: bool = True,
    frozen_names: dict[str, list[int]] | None = None,
    prune_normalized: bool = False,
    ignored_modules: frozenset[str] = frozenset(),
    gqa: str = "kv_groups",
) -> DependencyGraph:
    """Build the dependency graph of a recorded trace.

    Args:
        trace: From :func:`prunekit.graph.trace.record`.
        prune_heads: If False, dims split into (heads, head_dim) are frozen.
        prune_normalized: If True, a last dim normalised by LayerNorm/RMSNorm (or reduced by mean/var/std)
            may be pruned; those statistics then run over the kept channels (``DependencyGraph.stats``).
        ignored_modules: Modules the user asked to keep: unknown ops inside them are not flagged.
        gqa: ``"kv_groups"``: a KV head goes with all its query heads; ``"query_heads"``: KV heads are kept
            and the same query position is removed in every group (SDPA ``enable_gqa`` only).
        frozen_names: Parameter name -> dims to keep at full width (from ``ignore=``).

    Returns:
        The :class:`DependencyGraph`.

    Example:
        >>> import torch
        >>> from prunekit.graph.trace import record
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> g = build_graph(record(m, torch.randn(1, 3)))
        >>> [(gr.name, gr.n_units) for gr in g.groups]
        [('0:out', 8)]
    """
    b = GraphBuilder(trace, prune_heads, prune_normalized, ignored_modules, gqa)
    b.build()
    if frozen_names:
        name_to_vid = {n: v.vid for v in trace.values for n in v.names}
        for name, dims in frozen_names.items():
            vid = name_to_vid.get(name)
            if vid is None:
                continue
            st = b.state[vid]
            for d in dims:
                if d in st:
                    b.freeze(st[d])
    n = b.n
    if b.edges_a:
        a = np.concatenate(b.edges_a)
        c = np.concatenate(b.edges_b)
    else:
        a = c = np.zeros(0, np.int64)
    mat = coo_matrix((np.ones(len(a), dtype=np.int8), (a, c)), shape=(n, n))
    _, labels = connected_components(mat, directed=False)
    labels = labels.astype(np.int64)
    frozen_label = int(labels[FROZEN])
    groups = _make_groups(trace, b.param_dims, labels, frozen_label)
    return DependencyGraph(
        trace,
        groups,
        b.reasons,
        labels,
        frozen_label,
        b.param_dims,
        b.convs,
        b.events,
        b.costs,
        b.stats,
        b.gqa_groups,
    )


def _starts_mask(a: np.ndarray) -> np.ndarray:
    """True where a run of equal values of the sorted ``a`` begins."""
    mask = np.empty(len(a), dtype=bool)
    if len(a):
        mask[0] = True
        np.not_equal(a[1:], a[:-1], out=mask[1:])
    return mask


def _run_starts(a: np.ndarray) -> np.ndarray:
    """Index where each run of equal values of the sorted ``a`` begins (``np.unique``'s first indices)."""
    return np.flatnonzero(_starts_mask(a))


def _make_groups(
    trace: Trace, param_dims: list[tuple[int, int, int, int]], labels: np.ndarray, frozen_label: int
) -> list[Group]:
    if not param_dims:
        return []
    # every element of every parameter dim at once: its param-dim key, index in the dim and label
    pd_arr = np.asarray(param_dims, dtype=np.int64).reshape(-1, 4)
    sizes = pd_arr[:, 3]
    pdk = np.repeat(np.arange(len(param_dims), dtype=np.int64), sizes)
    pos = np.arange(len(pdk), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    lab = labels[np.repeat(pd_arr[:, 2], sizes) + pos]
    live = lab != frozen_label
    if not live.any():
        return []
    lab, pdk, pos = lab[live], pdk[live], pos[live]
    # the elements come ordered by (param dim, index): a stable sort by label is the (label, pdk, pos) lexsort
    order = np.argsort(lab, kind="stable")
    lab, pdk, pos = lab[order], pdk[order], pos[order]
    first_of = _run_starts(lab)
    uniq = lab[first_of]
    uid = np.cumsum(_starts_mask(lab)) - 1
    n_units = len(uniq)
    # signature of a unit = the (param dim) keys it touches, with index counts (vectorised)
    kk = len(param_dims)
    keys = uid * kk + pdk  # sorted already: by unit, then param dim
    key_starts = _run_starts(keys)
    pair_key = keys[key_starts]
    pair_count = np.diff(np.append(key_starts, len(keys)))
    pair_u, pair_pd = pair_key // kk, pair_key % kk
    starts = np.searchsorted(pair_u, np.arange(n_units))
    # two independent 64-bit hashes of each unit's set of (param dim, count) pairs; equal sets -> equal keys
    rng = np.random.default_rng(0)
    r1 = rng.integers(1, 2**62, size=kk, dtype=np.int64)
    r2 = rng.integers(1, 2**62, size=kk, dtype=np.int64)
    with np.errstate(over="ignore"):
        h1 = np.add.reduceat(r1[pair_pd] * (pair_count + 1), starts)
        h2 = np.add.reduceat(r2[pair_pd] ^ (pair_count * np.int64(0x1E3779B97F4A7C15)), starts)
    # np.unique(rows (h1, h2), axis=0, return_index, return_inverse) without its structured-dtype sort
    by_hash = np.lexsort((h2, h1))
    hs1, hs2 = h1[by_hash], h2[by_hash]
    new_sig = np.ones(len(by_hash), dtype=bool)
    new_sig[1:] = (hs1[1:] != hs1[:-1]) | (hs2[1:] != hs2[:-1])
    first = by_hash[new_sig]  # the stable sort keeps the first unit of each signature first
    inverse = np.empty(len(by_hash), dtype=np.int64)
    inverse[by_hash] = np.cumsum(new_sig) - 1
    ends = np.append(starts[1:], len(pair_pd))
    by_sig: dict[tuple[tuple[int, int], ...], list[int]] = {}
    order_sig = np.argsort(inverse, kind="stable")
    sig_bounds = np.searchsorted(inverse[order_sig], np.arange(len(first) + 1))
    for si in np.argsort(first):  # in order of first appearance
        rep = int(first[si])
        sig = tuple(
            zip(
                pair_pd[starts[rep] : ends[rep]].tolist(),
                pair_count[starts[rep] : ends[rep]].tolist(),
                strict=True,
            )
        )
        by_sig[sig] = order_sig[sig_bounds[si] : sig_bounds[si + 1]].tolist()
    group_of = np.full(n_units, -1, np.int64)
    index_in = np.zeros(n_units, np.int64)
    kept_sigs: list[tuple[tuple[tuple[int, int], ...], np.ndarray]] = []
    for sig, units in by_sig.items():
        if len(units) < 2 or all(trace.values[param_dims[k][0]].kind != "param" for k, _ in sig):
            continue
        group_of[units] = len(kept_sigs)
        index_in[units] = np.arange(len(units))
        kept_sigs.append((sig, np.asarray(units)))
    row_group = group_of[uid]
    # rows of one (group, param dim) pair made contiguous: a stable sort keeps their (label, index) order
    seg = np.where(row_group >= 0, row_group * kk + pdk, -1)
    order = np.argsort(seg, kind="stable")
    seg_sorted = seg[order]
    wanted = np.asarray([gi * kk + k for gi, (sig, _) in enumerate(kept_sigs) for k, _ in sig], np.int64)
    lo = np.searchsorted(seg_sorted, wanted, side="left").tolist()
    hi = np.searchsorted(seg_sorted, wanted, side="right").tolist()
    pos_sorted, ui_sorted = pos[order], index_in[uid[order]]
    groups: list[Group] = []
    at = 0
    for gi, (sig, unit_ids) in enumerate(kept_sigs):
        members = []
        multi = False
        for k, cnt in sig:
            vid, d, _, size = param_dims[k]
            arr = np.full(size, -1, np.int64)
            arr[pos_sorted[lo[at] : hi[at]]] = ui_sorted[lo[at] : hi[at]]
            at += 1
            members.append(Member(trace.values[vid].names[0], d, size, arr))
            multi = multi or cnt > 1
        groups.append(Group(gi, len(unit_ids), members, uniq[unit_ids], "multi" if multi else "channel"))
    return groups


__all__ = [
    "FROZEN",
    "ConvInfo",
    "CostOp",
    "DependencyGraph",
    "FrozenReason",
    "GqaGroups",
    "Group",
    "NormStat",
    "Member",
    "SizeEvent",
    "build_graph",
]
