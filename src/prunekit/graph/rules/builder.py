"""Coupling rules of the dependency graph (see :mod:`prunekit.graph.build`): one method per op family.

Each rule reads the tracked state of its inputs (per dimension: the element id of every index), couples
elements that must be removed together (``union``), freezes what can never change (``freeze``), and sets
the state of its outputs. Unknown ops freeze everything they touch and are reported.

The builder is assembled from the rule families::

    BuilderBase       (graph_rules_base: element ids, union/freeze, records)
     +- LayerRules    (graph_rules_layers: linear, conv, norms, embedding, reductions)
     +- ShapeRules    (graph_rules_shape: view, permute, cat/split, indexing)
     +- AttentionRules (graph_rules_attention: matmul, einsum, SDPA, MultiheadAttention)
    GraphBuilder           (this module: walks the trace and dispatches each call to its rule)
"""

from __future__ import annotations

from prunekit.graph.rules.attention import AttentionRules
from prunekit.graph.rules.base import (
    CAT_OPS,
    CONV_OPS,
    CONV_T_OPS,
    DIM_FREEZE,
    IGNORE_OPS,
    MATMUL_OPS,
    NORM_FREEZE,
    PERMUTE_OPS,
    POINTWISE_OPS,
    REDUCE_FREEZE,
    SPATIAL_OPS,
    SPLIT_OPS,
    SUM_OPS,
    VIEW_OPS,
    BuilderBase,
)
from prunekit.graph.rules.custom import apply_rule, rule_for
from prunekit.graph.rules.layers import LayerRules
from prunekit.graph.rules.shape import ShapeRules
from prunekit.graph.trace import Node


class GraphBuilder(LayerRules, ShapeRules, AttentionRules, BuilderBase):
    """Walks a :class:`~prunekit.graph.trace.Trace` and applies the coupling rule of each call."""

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
        if name in IGNORE_OPS and (name.startswith("new_") or not any(self.st(v) for v in node.inputs)):
            return  # x.new_zeros(size) reads only x's dtype and device: a fresh tensor, like torch.zeros
        rule = rule_for(name)
        if rule is not None:
            apply_rule(self, node, rule)  # a user rule (pk.register_coupling_rule) wins over built-in ones
            return
        try:
            if name in POINTWISE_OPS:
                self.r_pointwise(node)
            elif name in VIEW_OPS:
                self.r_view(node, node.inputs[0], node.outputs[0])
            elif name in PERMUTE_OPS:
                self.r_permute(node)
            elif name == "linear":
                self.r_linear(node)
            elif name in CONV_OPS:
                self.r_conv(node)
            elif name in CONV_T_OPS:
                self.r_conv_t(node)
            elif name in ("batch_norm", "instance_norm"):
                self.r_batch_norm(node)
            elif name in NORM_FREEZE:
                self.r_norm_freeze(node)
            elif name == "embedding":
                self.r_embedding(node)
            elif name in MATMUL_OPS:
                self.r_matmul(node)
            elif name == "einsum":
                self.r_einsum_call(node)
            elif name == "scaled_dot_product_attention":
                self.r_sdpa(node)
            elif name in CAT_OPS:
                self.r_cat(node)
            elif name == "stack":
                self.r_stack(node)
            elif name in SPLIT_OPS or name == "unbind":
                self.r_split(node)
            elif name in ("__getitem__", "narrow", "select"):
                self.r_getitem(node)
            elif name in ("expand", "expand_as", "broadcast_to"):
                self.r_expand(node)
            elif name in ("repeat", "repeat_interleave", "tile"):
                self.r_repeat(node)
            elif name in SPATIAL_OPS:
                self.r_spatial(node)
            elif name in SUM_OPS or name in REDUCE_FREEZE:
                self.r_reduce(node)
            elif name in DIM_FREEZE:
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
