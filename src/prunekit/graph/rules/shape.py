"""Coupling rules for shape ops: view/reshape, permute, expand/repeat, cat/stack/split, indexing.

These ops do not compute: they move indices. A reshape maps groups of input indices to output indices
(and records size literals that must follow a pruned dim), cat/split concatenate or cut id arrays,
indexing and in-place writes keep or freeze what they touch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from prunekit.graph.rules.base import (
    BuilderBase,
    SizeEvent,
    State,
)
from prunekit.graph.trace import Node, TensorRef


class ShapeRules(BuilderBase):
    """Rules of shape and indexing ops (see :func:`prunekit.graph.rules.builder._Builder.dispatch`)."""

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
