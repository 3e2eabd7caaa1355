"""User coupling rules: teach the dependency graph an op or a module type it does not know.

An op the graph does not know (a custom ``torch.autograd.Function``, a function from an extension)
freezes every channel it touches, with a warning. :func:`register_coupling_rule` lets a user say how
its dimensions are coupled instead (as Torch-Pruning's ``customized_pruners``)::

    class ScaleFn(torch.autograd.Function):       # y = x * 2, elementwise
        ...

    def scale_rule(ctx: pk.CouplingContext) -> None:
        ctx.elementwise(ctx.inputs[0], ctx.outputs[0])

    pk.register_coupling_rule(ScaleFn, scale_rule)  # or the op name "autograd.Function:ScaleFn"

A *module type* as target makes every call of such a module one opaque op (its inner ops are not
recorded): the rule sees the module's tensor arguments (``ctx.inputs``), its outputs, and its
parameters and buffers by local name (``ctx.params``), and says which of their dims go together::

    def rule(ctx):                                   # y = my_op(x, weight) * scale
        w = ctx.params["weight"]
        ctx.couple(ctx.inputs[0], -1, w, 1)          # input features = weight columns
        ctx.couple(w, 0, ctx.params["scale"], 0)     # output rows go with the scale
        ctx.couple(w, 0, ctx.outputs[0], -1)         # and are the output features

Every dim of an input, parameter or buffer the rule neither couples nor freezes is frozen (kept at
full width), so a rule only has to name what *may* change; output dims it does not couple never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError

if TYPE_CHECKING:
    from prunekit.graph.rules.base import BuilderBase
    from prunekit.graph.trace import Node

CouplingRule = Callable[["CouplingContext"], None]
OP_RULES: dict[str, CouplingRule] = {}
MODULE_RULES: dict[type[nn.Module], CouplingRule] = {}
MODULE_OP_PREFIX = "module:"


def module_op_name(cls: type[nn.Module]) -> str:
    """The op name a call of a rule-registered module type is recorded under."""
    return f"{MODULE_OP_PREFIX}{cls.__module__}.{cls.__qualname__}"


def register_coupling_rule(target: str | type, rule: CouplingRule) -> None:
    """Tell the dependency graph how ``target``'s dimensions are coupled, so its channels can be pruned.

    Args:
        target: an op name as recorded by the trace (a torch function or tensor method name such as
            ``"my_op"``, or ``"autograd.Function:<ClassName>"``), a ``torch.autograd.Function``
            subclass (same as its op name), or an ``nn.Module`` subclass (each call of such a module
            is then one opaque op).
        rule: ``rule(ctx)`` with a :class:`CouplingContext`; registering again replaces the rule.

    Raises:
        ConfigError: ``target`` is none of these, or ``rule`` is not callable.

    Example:
        >>> import prunekit as pk
        >>> pk.register_coupling_rule("my_elementwise_op", lambda ctx: ctx.elementwise(ctx.inputs[0], ctx.outputs[0]))
        >>> "my_elementwise_op" in pk.graph.coupling_rules()
        True
        >>> pk.unregister_coupling_rule("my_elementwise_op")
    """
    if not callable(rule):
        raise ConfigError(f"register_coupling_rule: rule must be callable as rule(ctx), got {type(rule).__name__}")
    if isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES[target] = rule
    elif isinstance(target, type) and issubclass(target, torch.autograd.Function):
        OP_RULES[f"autograd.Function:{target.__name__}"] = rule
    elif isinstance(target, str) and target.strip():
        OP_RULES[target] = rule
    else:
        raise ConfigError(
            "register_coupling_rule: target must be an op name (e.g. 'my_op' or 'autograd.Function:MyFn'), "
            f"a torch.autograd.Function subclass or an nn.Module subclass; got {target!r}"
        )


def unregister_coupling_rule(target: str | type) -> None:
    """Remove the rule of ``target`` (no error if there is none)."""
    if isinstance(target, type) and issubclass(target, nn.Module):
        MODULE_RULES.pop(target, None)
    elif isinstance(target, type):
        OP_RULES.pop(f"autograd.Function:{target.__name__}", None)
    else:
        OP_RULES.pop(target, None)


def coupling_rules() -> dict[str, CouplingRule]:
    """Every registered rule by recorded op name (module types as ``module:<module>.<qualname>``)."""
    return {**OP_RULES, **{module_op_name(c): r for c, r in MODULE_RULES.items()}}


def rule_for(name: str) -> CouplingRule | None:
    """The rule of a recorded op name, if one is registered."""
    if name in OP_RULES:
        return OP_RULES[name]
    if name.startswith(MODULE_OP_PREFIX):
        for cls, rule in MODULE_RULES.items():
            if module_op_name(cls) == name:
                return rule
    return None


def opaque_module_type(module: nn.Module) -> bool:
    """Whether calls of ``module`` are recorded as one opaque op (a rule is registered for its type)."""
    return type(module) in MODULE_RULES


class CouplingContext:
    """What a coupling rule sees of one recorded call, and how it couples or freezes dims.

    Values are value ids (ints) from :attr:`inputs`, :attr:`outputs` and :attr:`params`; dims may be
    negative (counted from the end).

    Attributes:
        node: the recorded call (``node.name``, ``node.args``/``node.kwargs`` with tensors replaced
            by ``TensorRef``, ``node.module`` = the running module's name).
        inputs: value ids of the tensor arguments (for a module rule: of its ``forward`` arguments).
        outputs: value ids of the tensor outputs.
        params: for a module rule, the module's parameters and buffers by name relative to it.
        module: for a module rule, the module object; else ``None``.
    """

    def __init__(self, builder: BuilderBase, node: Node) -> None:
        self._b = builder
        self.node = node
        n_params = int(node.kwargs.get("__n_params__", 0)) if node.name.startswith(MODULE_OP_PREFIX) else 0
        names: list[str] = list(node.kwargs.get("__param_names__", ())) if n_params else []
        split = len(node.inputs) - n_params
        self.inputs: list[int] = list(node.inputs[:split])
        self.params: dict[str, int] = dict(zip(names, node.inputs[split:], strict=True))
        self.outputs: list[int] = list(node.outputs)
        self.module: nn.Module | None = node.func if isinstance(node.func, nn.Module) else None
        self.touched: set[tuple[int, int]] = set()

    def shape(self, value: int) -> tuple[int, ...]:
        """The recorded shape of ``value``."""
        return self._b.shape(value)

    def _dim(self, value: int, dim: int) -> int:
        nd = len(self.shape(value))
        if not -nd <= dim < nd:
            raise ConfigError(f"coupling rule of {self.node.name!r}: dim {dim} out of range for shape {self.shape(value)}")
        return dim % nd

    def couple(self, value_a: int, dim_a: int, value_b: int, dim_b: int) -> None:
        """Index ``i`` of ``value_a``'s ``dim_a`` and index ``i`` of ``value_b``'s ``dim_b`` go together.

        An output dim not yet tracked takes the other side's elements (the channels flow through);
        a dim that can never change (e.g. a model input's) freezes the other side.

        Raises:
            ConfigError: the two dims differ in size.
        """
        da, db = self._dim(value_a, dim_a), self._dim(value_b, dim_b)
        na, nb = self.shape(value_a)[da], self.shape(value_b)[db]
        if na != nb:
            raise ConfigError(
                f"coupling rule of {self.node.name!r}: cannot couple dims of sizes {na} and {nb} "
                f"(shapes {self.shape(value_a)} dim {dim_a}, {self.shape(value_b)} dim {dim_b})"
            )
        self.touched.update({(value_a, da), (value_b, db)})
        sa, sb = self._b.st(value_a), self._b.st(value_b)
        outs = set(self.outputs)
        if db not in sb and value_b in outs and da in sa:
            self._b.state.setdefault(value_b, {})[db] = sa[da]
        elif da not in sa and value_a in outs and db in sb:
            self._b.state.setdefault(value_a, {})[da] = sb[db]
        elif da in sa and db in sb:
            self._b.union(sa[da], sb[db])
        elif da in sa:
            self._b.freeze(sa[da])
        elif db in sb:
            self._b.freeze(sb[db])

    def elementwise(self, value_a: int, value_b: int) -> None:
        """Couple every dim of two values of the same shape (an elementwise op)."""
        for d in range(len(self.shape(value_a))):
            self.couple(value_a, d, value_b, d)

    def freeze(self, value: int, dim: int | None = None) -> None:
        """Keep ``value``'s ``dim`` (every dim if ``None``) at full width."""
        st = self._b.st(value)
        dims = range(len(self.shape(value))) if dim is None else [self._dim(value, dim)]
        for d in dims:
            self.touched.add((value, d))
            if d in st:
                self._b.freeze(st[d])

    def finish(self) -> None:
        """Freeze every tracked dim of the inputs and parameters the rule did not mention."""
        for vid in [*self.inputs, *self.params.values()]:
            for d, ids in self._b.st(vid).items():
                if (vid, d) not in self.touched:
                    self._b.freeze(np.asarray(ids))


def apply_rule(builder: BuilderBase, node: Node, rule: CouplingRule) -> None:
    """Run ``rule`` on ``node``; afterwards freeze what it left unmentioned."""
    ctx = CouplingContext(builder, node)
    rule(ctx)
    ctx.finish()


def module_node_kwargs(module: nn.Module) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The parameters and buffers of ``module`` (appended to an opaque module call's inputs) and their names."""
    named = [*module.named_parameters(), *module.named_buffers()]
    tensors = [t for _, t in named]
    return tensors, {"__n_params__": len(tensors), "__param_names__": tuple(n for n, _ in named)}


__all__ = [
    "CouplingContext",
    "CouplingRule",
    "MODULE_OP_PREFIX",
    "apply_rule",
    "coupling_rules",
    "module_node_kwargs",
    "module_op_name",
    "opaque_module_type",
    "register_coupling_rule",
    "rule_for",
    "unregister_coupling_rule",
]
