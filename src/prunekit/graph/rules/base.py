"""Shared state of the dependency-graph builder: element ids, couplings and the records rules emit.

Every tensor dimension that could be pruned carries an array of *element ids* (one per index). Rules
(:mod:`prunekit.graph.rules.layers`, :mod:`prunekit.graph.rules.shape`,
:mod:`prunekit.graph.rules.attention`) couple ids that must be removed together (``union``), freeze
ids that can never change (``freeze``, i.e. union with :data:`FROZEN`), and record what surgery and
cost estimates need (:class:`ConvInfo`, :class:`SizeEvent`, :class:`NormStat`, :class:`GqaGroups`,
:class:`CostOp`). This module holds that state, the primitives over it and the op-name vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from prunekit.graph.trace import Node, Trace

FROZEN = 0
State = dict[int, np.ndarray]  # tracked dim -> element id per index

POINTWISE_OPS = frozenset(
    """
    add sub mul div true_divide floor_divide remainder fmod rsub pow float_power maximum minimum fmax fmin
    __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ __mul__ __rmul__ __imul__ __truediv__ __rtruediv__
    __itruediv__ __floordiv__ __rfloordiv__ __mod__ __pow__ __rpow__ __neg__ __pos__ __abs__ __and__ __or__
    __xor__ __invert__ __lt__ __le__ __gt__ __ge__ __ne__ __eq__ add_ sub_ mul_ div_ pow_ clamp_ clamp_min_
    clamp_max_ relu relu_ relu6 gelu silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardsigmoid hardtanh
    hardtanh_ leaky_relu leaky_relu_ elu elu_ selu celu softplus softsign mish logsigmoid tanhshrink
    threshold glu_ exp exp_ expm1 log log_ log1p log2 log10 sqrt rsqrt abs neg reciprocal sign sin cos tan
    erf erfc erfinv square clamp clip clamp_min clamp_max where masked_fill masked_fill_ lerp addcmul
    addcdiv dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout dropout_ contiguous
    clone detach detach_ float half double bfloat16 to type type_as cpu cuda zero_ fill_ nan_to_num
    floor ceil round trunc frac logical_not logical_and logical_or isnan isinf isfinite bitwise_not eq ne
    lt le gt ge zeros_like ones_like empty_like full_like rand_like randn_like data copy_ sigmoid_ mul_
    requires_grad logit hardshrink softshrink rrelu gelu_ sgn conj real positive
    """.split()
)
FIRST_ONLY = frozenset(
    {"type_as", "to", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"}
)
VIEW_OPS = frozenset(
    "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as squeeze_ unsqueeze_ _reshape_alias ravel".split()
)
PERMUTE_OPS = frozenset(
    "permute transpose swapaxes swapdims t T mT movedim moveaxis transpose_ t_ adjoint".split()
)
CAT_OPS = frozenset({"cat", "concat", "concatenate"})
SPLIT_OPS = frozenset({"split", "chunk", "split_with_sizes", "tensor_split", "unsafe_split", "unsafe_chunk"})
SPATIAL_OPS = frozenset(
    """
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d interpolate upsample
    upsample_nearest upsample_bilinear
    """.split()
)
SUM_OPS = frozenset({"sum", "nansum"})
REDUCE_FREEZE = frozenset(
    "mean nanmean amax amin max min prod std var norm logsumexp median var_mean std_mean any all argmax argmin count_nonzero".split()
)
DIM_FREEZE = frozenset(
    "softmax log_softmax softmin cumsum cumprod cummax cummin sort argsort topk normalize kthvalue logcumsumexp".split()
)
MATMUL_OPS = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "mv", "dot"}
)
CONV_OPS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
CONV_T_OPS = {"conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}
NORM_FREEZE = frozenset({"layer_norm", "rms_norm", "group_norm", "local_response_norm"})
IGNORE_OPS = frozenset(
    {
        "arange",
        "zeros",
        "ones",
        "empty",
        "full",
        "randn",
        "rand",
        "tensor",
        "as_tensor",
        "new_zeros",
        "new_ones",
        "new_empty",
        "new_full",
        "new_tensor",
        "triu",
        "tril",
        "ones_like_",
    }
)
SIZE_ATTR = re.compile(
    r"head|hidden|embed|dim|size|width|channel|feature|d_model|n_embd|inner|split|nf$|nx$"
)


@dataclasses.dataclass
class FrozenReason:
    """Why something was frozen (kept at full width)."""

    where: str
    op: str
    reason: str
    unknown: bool = False


@dataclasses.dataclass
class ConvInfo:
    module: str
    in_ids: np.ndarray
    depthwise: bool
    groups: int


@dataclasses.dataclass
class SizeEvent:
    """A size literal (reshape argument, split size) whose value follows a pruned dimension."""

    module: str
    old: int
    ids: np.ndarray


@dataclasses.dataclass
class NormStat:
    """A norm/mean over a pruned-able channel dim: its statistics must run over the kept channels only."""

    node: int
    dim: int
    ids: np.ndarray


@dataclasses.dataclass
class GqaGroups:
    """Query heads pruned per KV group: ``module``'s stored ratio ``rep`` follows the kept query heads."""

    module: str
    rep: int
    kv_heads: int
    ids: np.ndarray


@dataclasses.dataclass
class CostOp:
    """A matmul-like op: MACs after = ``macs`` * product of kept fractions of ``factors``."""

    macs: float
    factors: list[np.ndarray]


class BuilderBase:
    """State and primitives shared by every rule family (see :class:`prunekit.graph.rules.builder._Builder`)."""

    def __init__(
        self,
        trace: Trace,
        prune_heads: bool,
        prune_normalized: bool = False,
        ignored: frozenset[str] = frozenset(),
        gqa: str = "kv_groups",
    ) -> None:
        self.t = trace
        self.gqa = gqa
        self.gqa_groups: list[GqaGroups] = []
        self.ignored = ignored
        self.prune_heads = prune_heads
        self.prune_normalized = prune_normalized
        self.stats: list[NormStat] = []
        self.n = 1  # element 0 is FROZEN
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.state: dict[int, State] = {}
        self.param_dims: list[tuple[int, int, int, int]] = []  # (vid, dim, start, size)
        self.reasons: list[FrozenReason] = []
        self.convs: list[ConvInfo] = []
        self.events: list[SizeEvent] = []
        self.costs: list[CostOp] = []
        self.consumers: dict[int, list[int]] = defaultdict(list)
        for node in trace.nodes:
            for v in node.inputs:
                self.consumers[v].append(node.index)
        self.used: set[int] = set()
        for val in trace.values:
            if val.kind in ("param", "buffer"):
                st: State = {}
                for d, s in enumerate(val.shape):
                    ids = self.alloc(s)
                    st[d] = ids
                    self.param_dims.append((val.vid, d, int(ids[0]) if s else self.n, s))
                self.state[val.vid] = st
        self.param_elem = np.zeros(self.n, dtype=bool)
        for vid, _d, start, size in self.param_dims:
            if trace.values[vid].kind == "param":
                self.param_elem[start : start + size] = True

    # -- primitives -----------------------------------------------------------------------------
    def alloc(self, n: int) -> np.ndarray:
        ids = np.arange(self.n, self.n + n, dtype=np.int64)
        self.n += n
        return ids

    def union(self, a: np.ndarray, b: np.ndarray | int) -> None:
        a = np.asarray(a, dtype=np.int64)
        bb = np.broadcast_to(np.asarray(b, dtype=np.int64), a.shape)
        if a.size:
            self.edges_a.append(a.ravel())
            self.edges_b.append(np.ascontiguousarray(bb).ravel())

    def freeze(self, ids: np.ndarray) -> None:
        self.union(ids, FROZEN)

    def freeze_state(self, st: State) -> None:
        for ids in st.values():
            self.freeze(ids)

    def st(self, vid: int) -> State:
        return self.state.get(vid, {})

    def shape(self, vid: int) -> tuple[int, ...]:
        return self.t.values[vid].shape

    def note(self, node: Node, reason: str) -> None:
        self.reasons.append(FrozenReason(node.module or "<root>", node.name, reason))

    def touches_params(self, ids: np.ndarray) -> bool:
        """Whether ``ids`` include elements of parameters (not only buffers or fresh elements)."""
        inside = ids[ids < len(self.param_elem)]
        return bool(self.param_elem[inside].any())

    def unknown(self, node: Node, reason: str | None) -> None:
        touched = False
        for v in node.inputs:
            st = self.st(v)
            for ids in st.values():
                touched = touched or self.touches_params(ids)
            self.freeze_state(st)
        inside_ignored = any(node.module == m or node.module.startswith(m + ".") for m in self.ignored)
        if touched:
            is_unknown = reason is None and not inside_ignored
            if reason is None:
                kind = "custom autograd Function" if node.name.startswith("autograd.Function") else "op"
                reason = f"unknown {kind} '{node.name}': the channels it touches are kept"
            self.reasons.append(FrozenReason(node.module or "<root>", node.name, reason, is_unknown))

    # -- helpers --------------------------------------------------------------------------------
    def arg(self, node: Node, pos: int, key: str, default: Any = None) -> Any:
        if len(node.args) > pos:
            return node.args[pos]
        return node.kwargs.get(key, default)

    def elementwise(self, vids: list[int], out_shape: tuple[int, ...]) -> State:
        """Couple operands index by index over broadcast dims; return the output state."""
        nd = len(out_shape)
        out: State = {}
        for j in range(nd):
            n = out_shape[j]
            tracked: list[np.ndarray] = []
            untracked = False
            for v in vids:
                s = self.shape(v)
                k = j - (nd - len(s))
                if k < 0:
                    continue
                st = self.st(v)
                if s[k] != n or n == 1:
                    if k in st and s[k] > 1:  # tracked dim broadcast to a different size: keep it
                        self.freeze(st[k])
                    continue
                if k in st:
                    tracked.append(st[k])
                else:
                    untracked = True
            if not tracked:
                continue
            out[j] = self.couple(tracked, untracked)
        return out

    def couple(self, tracked: list[np.ndarray], untracked: bool) -> np.ndarray:
        """Union the ids of every tracked operand of one dim; an untracked operand there freezes them."""
        for ids in tracked[1:]:
            self.union(tracked[0], ids)
        if untracked:
            self.freeze(tracked[0])
        return tracked[0]

    def set_out(self, node: Node, st: State, idx: int = 0) -> None:
        if idx < len(node.outputs):
            self.state[node.outputs[idx]] = st

    def elementwise_dim(self, vids: list[int], j: int) -> np.ndarray | None:
        tracked = [self.st(v)[j] for v in vids if j in self.st(v)]
        if not tracked:
            return None
        return self.couple(tracked, untracked=len(tracked) < len(vids))

    def _dim(self, node: Node, pos: int, nd: int, default: int = 0) -> int:
        d = self.arg(node, pos, "dim", default)
        if d is None:
            d = default
        return int(d) % max(nd, 1)

    def _virtual(self, orig: int, st: State, shape: tuple[int, ...]) -> int:
        """A value id standing for ``orig`` with a modified state/shape (used by GQA head repeat)."""
        from prunekit.graph.trace import Value

        vid = len(self.t.values)
        self.t.values.append(Value(vid=vid, shape=tuple(shape), kind="virtual"))
        self.state[vid] = st
        return vid

    def einsum(self, ops: list[tuple[int, str]], out_vid: int, out_letters: str, cost: bool = True) -> State:
        """Couple operands by einsum letters (batch dims right-aligned, size-1 broadcast ignored)."""
        by_letter: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for vid, letters in ops:
            for k, c in enumerate(letters):
                by_letter[c].append((vid, k))
        out: State = {}
        factors: list[np.ndarray] = []
        sizes: dict[str, int] = {}
        for c, uses in by_letter.items():
            n = max(self.shape(v)[k] for v, k in uses)
            sizes[c] = n
            tracked: list[np.ndarray] = []
            untracked = False
            for v, k in uses:
                st = self.st(v)
                if self.shape(v)[k] != n or n == 1:
                    if k in st:
                        self.freeze(st[k])
                    continue
                if k in st:
                    tracked.append(st[k])
                else:
                    untracked = True
            if not tracked:
                continue
            factors.append(self.couple(tracked, untracked))
            if c in out_letters:
                out[out_letters.index(c)] = tracked[0]
        if cost:
            self.costs.append(CostOp(float(math.prod(sizes.values())), factors))
        return out


def einsum_letters(n: int) -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n]
