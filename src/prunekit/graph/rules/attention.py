"""Coupling rules for matmul-like ops and attention: matmul/einsum, SDPA (incl. GQA), nn.MultiheadAttention.

Operands are coupled letter by letter (einsum semantics). Attention keeps the q/k head_dim (it sets the
softmax scale) and prunes whole heads when ``prune_heads`` is on; with GQA, heads are coupled per KV
group.
"""

from __future__ import annotations

import math

import numpy as np

from prunekit.graph.rules.base import (
    BuilderBase,
    CostOp,
    GqaGroups,
    State,
    einsum_letters,
)
from prunekit.graph.trace import Node, TensorRef


class AttentionRules(BuilderBase):
    """Rules of matmul and attention ops (see :func:`prunekit.graph.rules.builder._Builder.dispatch`)."""

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
                la = einsum_letters(len(sa) - 2) + "mk"
            lb = "k" if len(sb) == 1 else "kn"
            if len(sb) > 2:
                lb = einsum_letters(len(sb) - 2) + "kn"
            out_l = la.replace("k", "") + (lb[-1] if len(sb) > 1 else "")
            out = self.einsum([(a, la), (b, lb)], node.outputs[0], out_l)
        else:
            nbatch = max(len(sa), len(sb)) - 2
            batch = einsum_letters(nbatch)
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
        batch = einsum_letters(nd - 3)
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
