"""Coupling rules for layer ops: pointwise, linear, conv, norms, embedding, pooling and reductions.

Each rule reads the tracked state of its inputs, couples the channels a layer ties together (for
example a conv's output channels with its bias and with the channels of the next op), freezes what a
layer cannot lose (normalised dims, reduced dims), and records convs and MAC costs.
"""

from __future__ import annotations

import math

import numpy as np

from prunekit.graph.rules.base import (
    FIRST_ONLY,
    SUM_OPS,
    BuilderBase,
    ConvInfo,
    CostOp,
    NormStat,
    State,
)
from prunekit.graph.trace import Node, TensorRef


class LayerRules(BuilderBase):
    """Rules of layer-like ops (see :func:`prunekit.graph.rules.builder._Builder.dispatch`)."""

    def r_pointwise(self, node: Node) -> None:
        vids = node.inputs[:1] if node.name in FIRST_ONLY else node.inputs
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

    def r_embedding(self, node: Node) -> None:
        idx, w = node.inputs[0], node.inputs[1]
        wst = self.st(w)
        self.freeze(wst[0])
        self.freeze_state(self.st(idx))
        self.set_out(node, {len(self.shape(idx)): wst[1]})

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
            if node.name not in SUM_OPS:
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
