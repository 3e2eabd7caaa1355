"""Coupling rules of the dependency graph (see :mod:`prunekit.graph`): one method per op family.

Each rule reads the tracked state of its inputs (per dimension: the element id of every index), couples
elements that must be removed together (``union``), freezes what can never change (``freeze``), and sets
the state of its outputs. Unknown ops freeze everything they touch and are reported.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from prunekit.trace import Node, TensorRef, Trace

FROZEN = 0
State = dict[int, np.ndarray]  # tracked dim -> element id per index

_POINTWISE = frozenset(
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
_FIRST_ONLY = frozenset(
    {"type_as", "to", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"}
)
_VIEW = frozenset(
    "view reshape flatten unflatten squeeze unsqueeze view_as reshape_as squeeze_ unsqueeze_ _reshape_alias ravel".split()
)
_PERMUTE = frozenset(
    "permute transpose swapaxes swapdims t T mT movedim moveaxis transpose_ t_ adjoint".split()
)
_CAT = frozenset({"cat", "concat", "concatenate"})
_SPLIT = frozenset({"split", "chunk", "split_with_sizes", "tensor_split", "unsafe_split", "unsafe_chunk"})
_SPATIAL = frozenset(
    """
    max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d lp_pool1d lp_pool2d interpolate upsample
    upsample_nearest upsample_bilinear
    """.split()
)
_SUM = frozenset({"sum", "nansum"})
_REDUCE_FREEZE = frozenset(
    "mean nanmean amax amin max min prod std var norm logsumexp median var_mean std_mean any all argmax argmin count_nonzero".split()
)
_DIM_FREEZE = frozenset(
    "softmax log_softmax softmin cumsum cumprod cummax cummin sort argsort topk normalize kthvalue logcumsumexp".split()
)
_MATMUL = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "mv", "dot"}
)
_CONV = {"conv1d": 1, "conv2d": 2, "conv3d": 3}
_CONV_T = {"conv_transpose1d": 1, "conv_transpose2d": 2, "conv_transpose3d": 3}
_NORM_FREEZE = frozenset({"layer_norm", "rms_norm", "group_norm", "local_response_norm"})
_IGNORE_OPS = frozenset(
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
_SIZE_ATTR = re.compile(
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


class _Builder:
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

    # -- walk -----------------------------------------------------------------------------------
    def build(self) -> None:
        for node in self.t.nodes:
            for v in node.inputs:
                self.used.add(v)
            self.dispatch(node)
        for vid in self.t.output_values:
            self.freeze_state(self.st(vid))
        for val in self.t.values:
            if val.kind in ("param", "buffer") and val.vid not in self.used:
                self.freeze_state(self.state[val.vid])

    def dispatch(self, node: Node) -> None:
        name = node.name
        if not node.outputs:
            return
        if name in _IGNORE_OPS and not any(self.st(v) for v in node.inputs):
            return
        try:
            if name in _POINTWISE:
                self.r_pointwise(node)
            elif name in _VIEW:
                self.r_view(node, node.inputs[0], node.outputs[0])
            elif name in _PERMUTE:
                self.r_permute(node)
            elif name == "linear":
                self.r_linear(node)
            elif name in _CONV:
                self.r_conv(node)
            elif name in _CONV_T:
                self.r_conv_t(node)
            elif name in ("batch_norm", "instance_norm"):
                self.r_batch_norm(node)
            elif name in _NORM_FREEZE:
                self.r_norm_freeze(node)
            elif name == "embedding":
                self.r_embedding(node)
            elif name in _MATMUL:
                self.r_matmul(node)
            elif name == "einsum":
                self.r_einsum_call(node)
            elif name == "scaled_dot_product_attention":
                self.r_sdpa(node)
            elif name in _CAT:
                self.r_cat(node)
            elif name == "stack":
                self.r_stack(node)
            elif name in _SPLIT or name == "unbind":
                self.r_split(node)
            elif name in ("__getitem__", "narrow", "select"):
                self.r_getitem(node)
            elif name in ("expand", "expand_as", "broadcast_to"):
                self.r_expand(node)
            elif name in ("repeat", "repeat_interleave", "tile"):
                self.r_repeat(node)
            elif name in _SPATIAL:
                self.r_spatial(node)
            elif name in _SUM or name in _REDUCE_FREEZE:
                self.r_reduce(node)
            elif name in _DIM_FREEZE:
                self.r_dim_freeze(node)
            elif name in ("flip", "roll", "pad", "fliplr", "flipud"):
                self.r_flip_pad(node)
            elif name == "prelu":
                self.r_prelu(node)
            elif name == "view_write":
                self.r_view_write(node)
            elif name == "__setitem__":
                self.r_setitem(node)
            elif name == "multi_head_attention_forward":
                self.r_mha(node)
            else:
                self.unknown(node, None)
        except (IndexError, ValueError, KeyError, TypeError) as e:  # a rule met a form it does not know
            self.unknown(node, f"could not map this call ({type(e).__name__}: {e})")

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
            for ids in tracked[1:]:
                self.union(tracked[0], ids)
            if untracked:
                self.freeze(tracked[0])
            out[j] = tracked[0]
        return out

    def set_out(self, node: Node, st: State, idx: int = 0) -> None:
        if idx < len(node.outputs):
            self.state[node.outputs[idx]] = st

    # -- rules ----------------------------------------------------------------------------------
    def r_pointwise(self, node: Node) -> None:
        vids = node.inputs[:1] if node.name in _FIRST_ONLY else node.inputs
        out_shape = self.shape(node.outputs[0])
        vids = [v for v in vids if len(self.shape(v)) <= len(out_shape)]
        for o in node.outputs:
            self.state[o] = self.elementwise(vids, self.shape(o))

    def r_prelu(self, node: Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        st = dict(self.st(x))
        wst = self.st(w)
        if self.shape(w)[0] > 1 and 1 in st:
            self.union(st[1], wst[0])
        elif self.shape(w)[0] > 1:
            self.freeze_state(wst)
        self.set_out(node, st)

    def _groups(
        self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> list[tuple[list[int], list[int]]] | None:
        ia = [d for d, s in enumerate(in_shape) if s != 1]
        oa = [d for d, s in enumerate(out_shape) if s != 1]
        groups: list[tuple[list[int], list[int]]] = []
        i = j = 0
        while i < len(ia) and j < len(oa):
            gi, gj = [ia[i]], [oa[j]]
            pi, pj = in_shape[ia[i]], out_shape[oa[j]]
            i += 1
            j += 1
            while pi != pj:
                if pi < pj:
                    if i >= len(ia):
                        return None
                    gi.append(ia[i])
                    pi *= in_shape[ia[i]]
                    i += 1
                else:
                    if j >= len(oa):
                        return None
                    gj.append(oa[j])
                    pj *= out_shape[oa[j]]
                    j += 1
            groups.append((gi, gj))
        if i != len(ia) or j != len(oa):
            return None
        return groups

    def _is_shuffle(self, out_vid: int, dims: list[int]) -> bool:
        """A split into (a, b) whose two new dims are swapped next (channel shuffle)."""
        if len(dims) != 2:
            return False
        nd = len(self.shape(out_vid))
        frontier = [out_vid]
        for _ in range(3):
            nxt = []
            for v in frontier:
                for ci in self.consumers.get(v, []):
                    c = self.t.nodes[ci]
                    if c.name in ("transpose", "swapaxes", "swapdims"):
                        pair = {int(self.arg(c, 1, "dim0")) % nd, int(self.arg(c, 2, "dim1")) % nd}
                        if pair == set(dims):
                            return True
                    elif c.name == "permute":
                        perm = list(c.args[1:]) if len(c.args) > 1 else list(c.kwargs.get("dims", ()))
                        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
                            perm = list(perm[0])
                        pos = [p % nd for p in perm]
                        if dims[0] in pos and dims[1] in pos and pos.index(dims[0]) > pos.index(dims[1]):
                            return True
                    elif c.name in ("contiguous", "clone"):
                        nxt.extend(c.outputs)
            frontier = nxt
        return False

    def r_view(self, node: Node, x: int, out_vid: int) -> None:
        in_shape, out_shape = self.shape(x), self.shape(out_vid)
        st = self.st(x)
        out: State = {}
        if not st:
            self.state[out_vid] = out
            return
        if math.prod(in_shape) != math.prod(out_shape):
            self.unknown(node, f"view changes the number of elements {in_shape} -> {out_shape}")
            return
        groups = self._groups(in_shape, out_shape)
        if groups is None:
            self.unknown(node, f"cannot match dims of {in_shape} -> {out_shape}")
            return
        for d, ids in st.items():
            if in_shape[d] == 1:
                self.freeze(ids)
        for gi, gj in groups:
            tr = [d for d in gi if d in st]
            if not tr:
                continue
            for d in tr[1:]:
                self.freeze(st[d])
            src = tr[0]
            sizes = [in_shape[d] for d in gi]
            shp = [1] * len(gi)
            shp[gi.index(src)] = in_shape[src]
            full = np.broadcast_to(st[src].reshape(shp), sizes)
            if len(gj) == 1:
                out[gj[0]] = np.ascontiguousarray(full).reshape(-1)
                continue
            osz = [out_shape[d] for d in gj]
            f2 = np.ascontiguousarray(full).reshape(osz)
            # (heads, head_dim) and (3, heads, head_dim): the dim before the innermost carries the
            # units (whole heads); a shuffle (groups, per_group) keeps equal positions in every group.
            carrier = len(gj) - 1 if self._is_shuffle(out_vid, gj) else len(gj) - 2
            if carrier == 0 and not self.prune_heads:
                self.freeze(st[src])
            mv = np.moveaxis(f2, carrier, 0).reshape(osz[carrier], -1)
            if mv.shape[1] > 1:
                self.union(mv[:, 1:], mv[:, :1])
            out[gj[carrier]] = mv[:, 0].copy()
        self.state[out_vid] = out
        self._size_literals(node, out_vid, out, st)

    def _size_literals(self, node: Node, out_vid: int, out: State, in_state: State) -> None:
        if node.name not in ("view", "reshape", "unflatten"):
            return
        lits: list[Any] = list(node.args[1:])
        if len(lits) == 1 and isinstance(lits[0], (tuple, list)):
            lits = list(lits[0])
        if node.name == "unflatten":
            return
        shape = self.shape(out_vid)
        if len(lits) != len(shape):
            return
        for j, ids in out.items():
            if isinstance(lits[j], int) and lits[j] == shape[j] and lits[j] > 1:
                self.events.append(SizeEvent(node.module, int(lits[j]), ids))

    def r_permute(self, node: Node) -> None:
        x = node.inputs[0]
        nd = len(self.shape(x))
        name = node.name
        if name in ("permute",):
            dims = list(node.args[1:]) if len(node.args) > 1 else list(node.kwargs.get("dims", ()))
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = list(dims[0])
            perm = [d % nd for d in dims]
        elif name in ("movedim", "moveaxis"):
            src = self.arg(node, 1, "source")
            dst = self.arg(node, 2, "destination")
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            perm = [int(p) for p in np.moveaxis(np.arange(nd), [s % nd for s in src], [d % nd for d in dst])]
        elif name in ("t", "T", "t_", "adjoint") or (name == "mT"):
            perm = list(range(nd))
            if nd >= 2:
                perm[-1], perm[-2] = perm[-2], perm[-1]
            if name == "T":
                perm = list(reversed(range(nd)))
        else:
            d0 = self.arg(node, 1, "dim0") % nd
            d1 = self.arg(node, 2, "dim1") % nd
            perm = list(range(nd))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        st = self.st(x)
        self.set_out(node, {j: st[p] for j, p in enumerate(perm) if p in st})

    def r_linear(self, node: Node) -> None:
        x = node.inputs[0]
        w = node.args[1].vid if isinstance(node.args[1], TensorRef) else node.kwargs["weight"].vid
        b = self.arg(node, 2, "bias")
        wst = self.st(w)
        xs = self.st(x)
        nd = len(self.shape(x))
        out: State = {d: ids for d, ids in xs.items() if d != nd - 1}
        if nd - 1 in xs:
            self.union(xs[nd - 1], wst[1])
        else:
            self.freeze(wst[1])
        out_ids = wst[0]
        if isinstance(b, TensorRef):
            self.union(out_ids, self.st(b.vid)[0])
        out[nd - 1] = out_ids
        self.set_out(node, out)
        wsh = self.shape(w)
        rows = math.prod(self.shape(x)[:-1])
        self.costs.append(CostOp(float(rows) * wsh[0] * wsh[1], [wst[0], wst[1]]))

    def r_conv(self, node: Node) -> None:
        x = node.inputs[0]
        w = node.args[1].vid
        b = self.arg(node, 2, "bias")
        groups = int(self.arg(node, 6, "groups", 1))
        xs = self.st(x)
        wst = self.st(w)
        wsh = self.shape(w)
        cin = self.shape(x)[1] if len(self.shape(x)) == len(wsh) else self.shape(x)[0]
        cdim = 1 if len(self.shape(x)) == len(wsh) else 0
        out: State = {cdim: wst[0]}
        for d, ids in xs.items():
            if d != cdim:
                self.freeze(ids)  # spatial dims of a conv input cannot be tracked
        for d in range(2, len(wsh)):
            self.freeze(wst[d])
        if isinstance(b, TensorRef):
            self.union(wst[0], self.st(b.vid)[0])
        ig, og = wsh[1], wsh[0] // groups
        depthwise = groups > 1 and ig == 1
        x_ids = xs.get(cdim)
        if depthwise:
            # input channel c feeds output channels [c*og, (c+1)*og): remove whole groups.
            self.freeze(wst[1])
            if x_ids is not None:
                self.union(wst[0].reshape(groups, og), x_ids.reshape(groups, 1))
            else:
                self.freeze(wst[0])
        else:
            if x_ids is not None:
                self.union(x_ids.reshape(groups, ig), wst[1].reshape(1, ig))
            else:
                self.freeze(wst[1])
            if groups > 1:  # equal positions in every group keep `groups` valid
                self.union(wst[0].reshape(groups, og), wst[0][:og].reshape(1, og))
        self.set_out(node, out)
        self.convs.append(
            ConvInfo(node.module, x_ids if x_ids is not None else np.zeros(cin, np.int64), depthwise, groups)
        )
        osh = self.shape(node.outputs[0])
        spatial = math.prod(osh[cdim + 1 :]) * (osh[0] if cdim == 1 else 1)
        self.costs.append(
            CostOp(float(spatial) * math.prod(wsh), [wst[0], wst[1]] if not depthwise else [wst[0]])
        )

    def r_conv_t(self, node: Node) -> None:
        x = node.inputs[0]
        w = node.args[1].vid
        b = self.arg(node, 2, "bias")
        groups = int(self.arg(node, 6, "groups", 1))
        xs, wst = self.st(x), self.st(w)
        wsh = self.shape(w)
        for d in range(2, len(wsh)):
            self.freeze(wst[d])
        cdim = 1 if len(self.shape(x)) == len(wsh) else 0
        for d, ids in xs.items():
            if d != cdim:
                self.freeze(ids)
        if groups != 1:
            self.unknown(node, "grouped transposed convolution is kept at full width")
            self.freeze_state(wst)
            self.set_out(node, {})
            return
        if cdim in xs:
            self.union(xs[cdim], wst[0])
        else:
            self.freeze(wst[0])
        if isinstance(b, TensorRef):
            self.union(wst[1], self.st(b.vid)[0])
        self.set_out(node, {cdim: wst[1]})
        osh = self.shape(node.outputs[0])
        self.costs.append(
            CostOp(float(math.prod(self.shape(x)[cdim + 1 :])) * math.prod(wsh), [wst[0], wst[1]])
        )
        del osh

    def r_batch_norm(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        cdim = 1 if len(self.shape(x)) > 1 else 0
        ids = xs.get(cdim)
        params = [a for a in node.args[1:5] if isinstance(a, TensorRef)]
        params += [a for k, a in node.kwargs.items() if isinstance(a, TensorRef)]
        for p in params:
            pst = self.st(p.vid)
            if ids is None:
                self.freeze_state(pst)
            elif 0 in pst:
                self.union(ids, pst[0])
        self.set_out(node, dict(xs))

    def r_norm_freeze(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        nd = len(self.shape(x))
        if node.name == "group_norm":
            dims = [1 if nd > 1 else 0]
        elif node.name == "local_response_norm":
            dims = [1]
        else:
            ns = self.arg(node, 1, "normalized_shape")
            k = len(ns) if isinstance(ns, (tuple, list)) else 1
            dims = list(range(nd - k, nd))
        last = nd - 1
        if (
            self.prune_normalized
            and node.name in ("layer_norm", "rms_norm")
            and dims == [last]
            and last in xs
        ):
            # statistics over the kept channels only (the oracle check replays this call the same way)
            for v in node.inputs[1:]:
                vs = self.st(v)
                if 0 in vs and len(vs[0]) == len(xs[last]):
                    self.union(xs[last], vs[0])
                else:
                    self.freeze_state(vs)
            self.stats.append(NormStat(node.index, last, xs[last]))
            self.set_out(node, dict(xs))
            return
        groups = self.arg(node, 1, "num_groups")
        if (
            self.prune_normalized
            and node.name == "group_norm"
            and nd > 1
            and 1 in xs
            and isinstance(groups, int)
        ):
            # equal positions removed in every group keep num_groups valid; stats over the kept channels
            per = xs[1].reshape(groups, -1)
            self.union(per, per[:1])
            for v in node.inputs[1:]:
                vs = self.st(v)
                if 0 in vs and len(vs[0]) == len(xs[1]):
                    self.union(xs[1], vs[0])
                else:
                    self.freeze_state(vs)
            self.stats.append(NormStat(node.index, 1, xs[1]))
            self.set_out(node, dict(xs))
            return
        touched = False
        for d in dims:
            if d in xs:
                self.freeze(xs[d])
                touched = True
        for v in node.inputs[1:]:
            self.freeze_state(self.st(v))
        if touched:
            self.note(
                node,
                f"{node.name} normalises over a channel dim: removing channels would change its statistics",
            )
        self.set_out(node, dict(xs))

    def r_mha(self, node: Node) -> None:
        """nn.MultiheadAttention: its embed_dim is both the input width and heads * head_dim.

        Head h is coupled with hidden channels [h*hd, (h+1)*hd) (q/k/v rows, out-proj columns and rows,
        in-proj columns): removing a unit removes a whole head and the same number of hidden channels, so
        ``head_dim`` (and the softmax scale) never changes.
        """
        a = list(node.args) + [None] * (13 - len(node.args))
        q, k, v, heads, w_in, b_in, bias_k, w_out, b_out = (
            a[0],
            a[1],
            a[2],
            a[4],
            a[5],
            a[6],
            a[7],
            a[11],
            a[12],
        )
        separate = node.kwargs.get("use_separate_proj_weight", False)
        refs = [q, k, v, w_in, w_out]
        if (
            separate
            or bias_k is not None
            or not all(isinstance(r, TensorRef) for r in refs)
            or not isinstance(heads, int)
        ):
            self.unknown(node, "nn.MultiheadAttention with kdim/vdim or bias_k/bias_v is kept at full width")
            return
        wi, wo = self.st(w_in.vid), self.st(w_out.vid)
        e = self.shape(w_out.vid)[0]
        hd = e // heads
        internal = [wi[0][t * e : (t + 1) * e] for t in range(3)] + [wo[1], wo[0], wi[1]]
        if isinstance(b_in, TensorRef):
            bi = self.st(b_in.vid)[0]
            internal += [bi[t * e : (t + 1) * e] for t in range(3)]
        if isinstance(b_out, TensorRef):
            internal.append(self.st(b_out.vid)[0])
        for ids in internal[1:]:
            self.union(internal[0], ids)
        blocks = internal[0].reshape(heads, hd)
        self.union(blocks[:, 1:], blocks[:, :1])  # whole heads
        for r in (q, k, v):
            rs = self.st(r.vid)
            nd = len(self.shape(r.vid))
            for d, ids in rs.items():
                if d == nd - 1:
                    self.union(ids, internal[0])
                else:
                    self.freeze(ids)
            if nd - 1 not in rs:
                self.freeze(internal[0])
        if not self.prune_heads:
            self.freeze(internal[0])
        self.set_out(node, {len(self.shape(node.outputs[0])) - 1: wo[0]})
        tokens = math.prod(self.shape(q.vid)[:-1])
        self.costs.append(CostOp(float(tokens) * 4 * e * e, [wo[0], wo[0]]))

    def r_embedding(self, node: Node) -> None:
        idx, w = node.inputs[0], node.inputs[1]
        wst = self.st(w)
        self.freeze(wst[0])
        self.freeze_state(self.st(idx))
        self.set_out(node, {len(self.shape(idx)): wst[1]})

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
            for ids in tracked[1:]:
                self.union(tracked[0], ids)
            if untracked:
                self.freeze(tracked[0])
            factors.append(tracked[0])
            if c in out_letters:
                out[out_letters.index(c)] = tracked[0]
        if cost:
            self.costs.append(CostOp(float(math.prod(sizes.values())), factors))
        return out

    def r_matmul(self, node: Node) -> None:
        name = node.name
        tens = list(node.inputs)
        extra: list[int] = []
        if name in ("baddbmm", "addmm", "addbmm"):
            extra, tens = tens[:1], tens[1:3]
        if name == "__rmatmul__":
            tens = tens[::-1]
        a, b = tens[0], tens[1]
        sa, sb = self.shape(a), self.shape(b)
        if len(sa) == 1 or len(sb) == 1:
            la = "k" if len(sa) == 1 else "m" + "k"
            if len(sa) > 2:
                la = _letters(len(sa) - 2) + "mk"
            lb = "k" if len(sb) == 1 else "kn"
            if len(sb) > 2:
                lb = _letters(len(sb) - 2) + "kn"
            out_l = la.replace("k", "") + (lb[-1] if len(sb) > 1 else "")
            out = self.einsum([(a, la), (b, lb)], node.outputs[0], out_l)
        else:
            nbatch = max(len(sa), len(sb)) - 2
            batch = _letters(nbatch)
            la = batch[nbatch - (len(sa) - 2) :] + "mk"
            lb = batch[nbatch - (len(sb) - 2) :] + "kn"
            out = self.einsum([(a, la), (b, lb)], node.outputs[0], batch + "mn")
        if extra:  # addmm/baddbmm: the added input is elementwise with the product
            out_shape = self.shape(node.outputs[0])
            e = extra[0]
            es, esh = self.st(e), self.shape(e)
            for d, ids in es.items():
                j = d + len(out_shape) - len(esh)
                if esh[d] != out_shape[j] or esh[d] == 1:
                    self.freeze(ids)
                elif j in out:
                    self.union(out[j], ids)
                else:
                    self.freeze(ids)
        self.set_out(node, out)

    def r_einsum_call(self, node: Node) -> None:
        eq = node.args[0].replace(" ", "")
        ops = node.inputs
        if "->" not in eq or "..." in eq:
            self.unknown(node, "einsum without an explicit output or with '...'")
            return
        lhs, rhs = eq.split("->")
        terms = lhs.split(",")
        if len(terms) != len(ops):
            self.unknown(node, "einsum operands do not match the equation")
            return
        self.set_out(node, self.einsum(list(zip(ops, terms, strict=True)), node.outputs[0], rhs))

    def r_sdpa(self, node: Node) -> None:
        q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
        mask = self.arg(node, 3, "attn_mask")
        gqa = bool(node.kwargs.get("enable_gqa", False))
        sq, sk = self.shape(q), self.shape(k)
        nd = len(sq)
        qs, ks, vs = dict(self.st(q)), dict(self.st(k)), dict(self.st(v))
        hq, hk = (sq[-3], sk[-3]) if nd >= 3 else (1, 1)
        for st in (qs, ks):
            if nd - 1 in st:
                self.freeze(st[nd - 1])  # head_dim of q/k sets the softmax scale: keep it
                if self.touches_params(st[nd - 1]):
                    self.note(node, "q/k head_dim is kept (it sets the attention scale)")
                del st[nd - 1]
        if not self.prune_heads:
            for st in (qs, ks, vs):
                if nd - 3 in st:
                    self.freeze(st[nd - 3])
        if gqa and hq != hk and nd >= 3 and self.gqa == "query_heads":
            self._sdpa_query_heads(node, qs, ks, vs, hq, hk, nd)
            return
        if gqa and hq != hk and nd >= 3:
            rep = hq // hk
            for st in (ks, vs):
                if nd - 3 in st:
                    st[nd - 3] = np.repeat(st[nd - 3], rep)
        batch = _letters(nd - 3)
        tmp_k = self._virtual(k, ks, sq[:-2] + sk[-2:]) if gqa and hq != hk else self._virtual(k, ks, sk)
        tmp_v = (
            self._virtual(v, vs, sq[:-2] + self.shape(v)[-2:])
            if gqa and hq != hk
            else self._virtual(v, vs, self.shape(v))
        )
        tmp_q = self._virtual(q, qs, sq)
        ops = [(tmp_q, batch + "hle"), (tmp_k, batch + "hse"), (tmp_v, batch + "hsf")]
        if isinstance(mask, TensorRef):
            ms = self.shape(mask.vid)
            letters = (batch + "hls")[-len(ms) :] if ms else ""
            ops.append((mask.vid, letters))
        out = self.einsum(ops, node.outputs[0], batch + "hlf", cost=False)
        self.set_out(node, out)
        # q @ k^T and attn @ v: (batch, h, l, s) x (e + f)
        h_ids = [st[nd - 3] for st in (qs,) if nd - 3 in st]
        self.costs.append(CostOp(float(math.prod(sq[:-1]) * sk[-2] * (sq[-1] + self.shape(v)[-1])), h_ids))

    def _sdpa_query_heads(
        self, node: Node, qs: State, ks: State, vs: State, hq: int, hk: int, nd: int
    ) -> None:
        """GQA, alternative units: the same query position in every KV group (KV heads are kept).

        Query head h uses KV head h // (hq / hk); removing position j of every group keeps that mapping.
        """
        rep = hq // hk
        for st in (ks, vs):
            self.freeze_state(st)
        mask = self.arg(node, 3, "attn_mask")
        if isinstance(mask, TensorRef):
            self.freeze_state(self.st(mask.vid))
        out: State = {}
        for d, ids in qs.items():
            if d == nd - 3:
                per = ids.reshape(hk, rep)
                self.union(per, per[:1])
                out[d] = ids
            else:
                self.freeze(ids)
        if nd - 3 in out:
            self.gqa_groups.append(GqaGroups(node.module, rep, hk, out[nd - 3]))
        self.set_out(node, out)
        sq = self.shape(node.inputs[0])
        e_v = self.shape(node.inputs[2])[-1]
        macs = float(math.prod(sq[:-1]) * self.shape(node.inputs[1])[-2] * (sq[-1] + e_v))
        self.costs.append(CostOp(macs, list(out.values())[:1]))

    def _virtual(self, orig: int, st: State, shape: tuple[int, ...]) -> int:
        """A value id standing for ``orig`` with a modified state/shape (used by GQA head repeat)."""
        from prunekit.trace import Value

        vid = len(self.t.values)
        self.t.values.append(Value(vid=vid, shape=tuple(shape), kind="virtual"))
        self.state[vid] = st
        return vid

    def _dim(self, node: Node, pos: int, nd: int, default: int = 0) -> int:
        d = self.arg(node, pos, "dim", default)
        if d is None:
            d = default
        return int(d) % max(nd, 1)

    def r_cat(self, node: Node) -> None:
        tensors = (
            [t.vid for t in node.args[0] if isinstance(t, TensorRef)]
            if isinstance(node.args[0], (list, tuple))
            else node.inputs
        )
        tensors = [v for v in tensors if math.prod(self.shape(v)) > 0 or len(self.shape(v)) > 1]
        out_shape = self.shape(node.outputs[0])
        nd = len(out_shape)
        d = self._dim(node, 1, nd)
        tensors = [v for v in tensors if len(self.shape(v)) == nd and self.shape(v)[d] > 0]
        out: State = {}
        for j in range(nd):
            if j == d:
                continue
            sub = self.elementwise_dim(tensors, j)
            if sub is not None:
                out[j] = sub
        if any(d in self.st(v) for v in tensors):
            parts = []
            for v in tensors:
                st = self.st(v)
                if d in st:
                    parts.append(st[d])
                else:
                    ids = self.alloc(self.shape(v)[d])
                    self.freeze(ids)
                    parts.append(ids)
            out[d] = np.concatenate(parts)
        self.set_out(node, out)

    def elementwise_dim(self, vids: list[int], j: int) -> np.ndarray | None:
        tracked = [self.st(v)[j] for v in vids if j in self.st(v)]
        if not tracked:
            return None
        for ids in tracked[1:]:
            self.union(tracked[0], ids)
        if len(tracked) < len(vids):
            self.freeze(tracked[0])
        return tracked[0]

    def r_stack(self, node: Node) -> None:
        tensors = [t.vid for t in node.args[0] if isinstance(t, TensorRef)]
        out_shape = self.shape(node.outputs[0])
        d = self._dim(node, 1, len(out_shape))
        out: State = {}
        nd_in = len(out_shape) - 1
        for j in range(nd_in):
            sub = self.elementwise_dim(tensors, j)
            if sub is not None:
                out[j if j < d else j + 1] = sub
        self.set_out(node, out)

    def r_split(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        nd = len(self.shape(x))
        d = self._dim(node, 2 if node.name != "unbind" else 1, nd)
        outs = node.outputs
        if node.name == "unbind":
            if d in xs:
                self.freeze(xs[d])
                self.note(node, "unbind over a channel dim")
            for o in outs:
                self.state[o] = {(j if j < d else j - 1): ids for j, ids in xs.items() if j != d}
            return
        if d not in xs:
            for o in outs:
                self.state[o] = dict(xs)
            return
        sizes = [self.shape(o)[d] for o in outs]
        ids = xs[d]
        off = 0
        equal = len(set(sizes)) == 1 and node.name != "tensor_split"
        if not equal:
            self.freeze(ids)
            self.note(node, f"{node.name} into unequal sizes {sizes} over a channel dim")
        first = ids[: sizes[0]]
        for o, s in zip(outs, sizes, strict=True):
            part = ids[off : off + s]
            if equal:
                self.union(part, first)
            off += s
            st = dict(xs)
            st[d] = first if equal else part
            self.state[o] = st
        if equal and node.name in ("split", "split_with_sizes", "unsafe_split"):
            size_arg = self.arg(node, 1, "split_size_or_sections", self.arg(node, 1, "split_size"))
            if isinstance(size_arg, int):
                self.events.append(SizeEvent(node.module, size_arg, first))

    def r_getitem(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        shape = self.shape(x)
        out_shape = self.shape(node.outputs[0])
        if node.name == "narrow":
            d = int(self.arg(node, 1, "dim")) % len(shape)
            idx: Any = tuple([slice(None)] * d + [slice(0, out_shape[d])])
            if out_shape[d] != shape[d] and d in xs:
                self.freeze(xs[d])
            st = dict(xs)
            if d in st:
                st[d] = st[d][: out_shape[d]]
            self.set_out(node, st)
            return
        if node.name == "select":
            d = int(self.arg(node, 1, "dim")) % len(shape)
            if d in xs:
                self.freeze(xs[d])
            self.set_out(node, {(j if j < d else j - 1): ids for j, ids in xs.items() if j != d})
            return
        idx = node.args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        n_adv = sum(isinstance(i, (TensorRef, list)) for i in idx)
        consumed = sum(1 for i in idx if i is not None and i is not Ellipsis and not isinstance(i, bool))
        out: State = {}
        if n_adv > 1:
            self.freeze_state(xs)
            self.set_out(node, {})
            return
        ell = [k for k, i in enumerate(idx) if i is Ellipsis]
        if ell:
            k = ell[0]
            idx = idx[:k] + (slice(None),) * (len(shape) - consumed) + idx[k + 1 :]
        d = o = 0
        for i in idx:
            if i is None:
                o += 1
            elif isinstance(i, bool):
                o += 1
            elif isinstance(i, int):
                if d in xs:
                    self.freeze(xs[d])
                d += 1
            elif isinstance(i, slice):
                if d in xs:
                    ids = xs[d][i]
                    if len(ids) != shape[d]:
                        self.freeze(xs[d])
                    out[o] = ids
                d += 1
                o += 1
            else:  # advanced index (tensor or list): index values are positions, never channels
                if isinstance(i, TensorRef):
                    self.freeze_state(self.st(i.vid))
                nd_idx = len(self.shape(i.vid)) if isinstance(i, TensorRef) else 1
                is_bool = isinstance(i, TensorRef) and self.t.values[i.vid].shape and False
                del is_bool
                if d in xs:
                    self.freeze(xs[d])
                d += 1
                o += nd_idx
        while d < len(shape):
            if d in xs:
                out[o] = xs[d]
            d += 1
            o += 1
        if o != len(out_shape):
            self.freeze_state(xs)
            out = {}
        self.set_out(node, out)

    def r_expand(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        sx, so = self.shape(x), self.shape(node.outputs[0])
        off = len(so) - len(sx)
        out: State = {}
        for d, ids in xs.items():
            if sx[d] == so[d + off]:
                out[d + off] = ids
            else:
                self.freeze(ids)
        self.set_out(node, out)

    def r_repeat(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        sx, so = self.shape(x), self.shape(node.outputs[0])
        out: State = {}
        if node.name == "repeat_interleave":
            d = self.arg(node, 2, "dim")
            reps = self.arg(node, 1, "repeats")
            if d is None or not isinstance(reps, int):
                self.freeze_state(xs)
                self.set_out(node, {})
                return
            d = int(d) % len(sx)
            out = dict(xs)
            if d in xs:
                out[d] = np.repeat(xs[d], reps)
            self.set_out(node, out)
            return
        off = len(so) - len(sx)
        for d, ids in xs.items():
            r = so[d + off] // sx[d]
            out[d + off] = np.tile(ids, r)
        self.set_out(node, out)

    def r_spatial(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        sx = self.shape(x)
        nsp = {"1d": 1, "2d": 2, "3d": 3}
        k = next((v for s, v in nsp.items() if s in node.name), len(sx) - 2)
        first_spatial = len(sx) - k
        out: State = {}
        for d, ids in xs.items():
            if d >= first_spatial:
                self.freeze(ids)
            else:
                out[d] = ids
        for i, o in enumerate(node.outputs):
            if i == 0 or len(self.shape(o)) == len(sx):
                self.state[o] = out

    def _reduce_dims(self, node: Node, nd: int) -> list[int] | None:
        d = self.arg(node, 1, "dim")
        if d is None or (isinstance(d, (tuple, list)) and len(d) == 0):
            return None
        if isinstance(d, int):
            return [d % nd]
        if isinstance(d, (tuple, list)) and all(isinstance(i, int) for i in d):
            return [i % nd for i in d]
        raise TypeError(f"reduction dims {d!r}")

    def r_reduce(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        nd = len(self.shape(x))
        dims = self._reduce_dims(node, max(nd, 1))
        if dims is None:
            dims = list(range(nd))
        keep = bool(self.arg(node, 2, "keepdim", False))
        if node.name in ("max", "min") and len(node.args) > 1 and isinstance(node.args[1], TensorRef):
            self.r_pointwise(node)
            return
        frozen = False
        tracked = [d for d in dims if d in xs]
        if (
            self.prune_normalized
            and node.name in ("mean", "var", "std", "nanmean")
            and len(tracked) == 1
            and len(dims) == 1
        ):
            self.stats.append(NormStat(node.index, tracked[0], xs[tracked[0]]))
            tracked = []
        for d in tracked:
            if node.name not in _SUM:
                self.freeze(xs[d])
                frozen = True
        if frozen:
            self.note(node, f"{node.name} over a channel dim: removing channels would change it")
        out: State = {}
        for d, ids in xs.items():
            if d in dims:
                continue
            out[d if keep else d - sum(1 for r in dims if r < d)] = ids
        for o in node.outputs:
            if len(self.shape(o)) == nd - (0 if keep else len(dims)):
                self.state[o] = out

    def r_dim_freeze(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        nd = len(self.shape(x))
        d = self.arg(node, 1, "dim")
        if node.name == "normalize":
            d = self.arg(node, 2, "dim", 1)
        if node.name == "topk":
            d = self.arg(node, 2, "dim", -1)
        if d is None:
            d = nd - 1 if node.name not in ("softmax", "log_softmax", "softmin") else 0
        d = int(d) % max(nd, 1)
        if d in xs:
            self.freeze(xs[d])
            self.note(node, f"{node.name} over a channel dim: removing channels would change it")
        for o in node.outputs:
            st = dict(xs)
            if len(self.shape(o)) == nd and self.shape(o)[d] != self.shape(x)[d]:
                st.pop(d, None)
            self.state[o] = st

    def r_flip_pad(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        sx, so = self.shape(x), self.shape(node.outputs[0])
        out: State = {}
        if node.name == "pad":
            for d, ids in xs.items():
                if sx[d] != so[d]:
                    self.freeze(ids)
                else:
                    out[d] = ids
            self.set_out(node, out)
            return
        dims = self.arg(node, 1, "dims") if node.name == "flip" else self.arg(node, 2, "dims")
        if node.name in ("fliplr", "flipud"):
            dims = [1] if node.name == "fliplr" else [0]
        if dims is None:
            dims = list(range(len(sx)))
        if isinstance(dims, int):
            dims = [dims]
        dims = [int(d) % len(sx) for d in dims]
        out = dict(xs)
        for d in dims:
            if d in xs:
                if node.name.startswith("flip"):
                    out[d] = xs[d][::-1].copy()
                else:
                    self.freeze(xs[d])
        self.set_out(node, out)

    def r_view_write(self, node: Node) -> None:
        base, view = node.inputs[0], node.inputs[1]
        bs = self.st(base)
        vs = self.st(view)
        prod = self.t.values[view].producer
        # find the node that created the view (the in-place op's input) and check it left channels whole
        src = self.t.nodes[prod] if prod >= 0 else None
        view_in = src.inputs[0] if src is not None and src.inputs else -1
        vin_node = (
            self.t.nodes[self.t.values[view_in].producer]
            if view_in >= 0 and self.t.values[view_in].producer >= 0
            else None
        )
        ok = vin_node is not None and vin_node.name in ("__getitem__", "narrow", "select", "view", "reshape")
        if ok and vin_node is not None:
            vin_src = self.st(vin_node.inputs[0])
            vin_out = self.st(vin_node.outputs[0])
            ok = all(any(ids is o for o in vin_out.values()) for ids in vin_src.values())
        if not ok:
            self.freeze_state(bs)
            self.freeze_state(vs)
            if bs or vs:
                self.note(node, "in-place write into a slice of a channel dim")
        self.set_out(node, dict(bs))

    def r_setitem(self, node: Node) -> None:
        x = node.inputs[0]
        xs = self.st(x)
        idx = node.args[1]
        if not isinstance(idx, tuple):
            idx = (idx,)
        touches = any(not (isinstance(i, slice) and i == slice(None)) and i is not Ellipsis for i in idx)
        if touches and xs:
            # only the leading indexed dims are touched; channels after them are fine
            lead = len(idx)
            for d, ids in xs.items():
                if d < lead and not (isinstance(idx[d], slice) and idx[d] == slice(None)):
                    self.freeze(ids)
        for v in node.inputs[1:]:
            vs = self.st(v)
            xshape, vshape = self.shape(x), self.shape(v)
            for d, ids in vs.items():
                j = d + len(xshape) - len(vshape)
                if j in xs and len(xs[j]) == len(ids):
                    self.union(xs[j], ids)
                else:
                    self.freeze(ids)
        self.set_out(node, dict(xs))


def _letters(n: int) -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n]
