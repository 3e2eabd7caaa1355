"""The dependency graph: record one eager forward (:mod:`~prunekit.graph.trace`), then couple every slice of
every parameter that must be removed together (:mod:`~prunekit.graph.rules`, :mod:`~prunekit.graph.build`)."""

from __future__ import annotations

from prunekit.graph.build import DependencyGraph, Group, Member, build_graph
from prunekit.graph.rules.base import SIZE_ATTR
from prunekit.graph.rules.custom import (
    CouplingContext,
    CouplingRule,
    coupling_rules,
    register_coupling_rule,
    unregister_coupling_rule,
)
from prunekit.graph.trace import TensorRef, Trace, as_args, eval_mode, flatten_tensors, record

__all__ = [
    "as_args",
    "build_graph",
    "coupling_rules",
    "CouplingContext",
    "CouplingRule",
    "DependencyGraph",
    "eval_mode",
    "flatten_tensors",
    "Group",
    "Member",
    "record",
    "register_coupling_rule",
    "SIZE_ATTR",
    "TensorRef",
    "Trace",
    "unregister_coupling_rule",
]
